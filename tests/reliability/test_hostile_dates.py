"""Dates and cursors at the edges of the calendar (issue 10, item 11), against a
real ``aigw serve``.

A timestamp near year 1 or 9999 with an offset (``0001-01-01T00:00:00+14:00`` is
year 0 in UTC; ``9999-12-31T23:59:59-14:00`` is year 10000) cannot be stored,
compared or shifted by a period: every admin route that reads a date or a
cursor answers such a value with a 4xx problem, never a 500 — given as a usage
``from``/``to``, or inside a cursor (as a hand-made cursor decodes to it, or as
a real cursor tampered with).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import empty_database
from tests.reliability.conftest import assert_problem, gateway_environment, unique
from tests.support import Gateway, start_gateway

EDGES = (
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00",
    "0001-01-01T13:59:59+14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999",
    "9999-12-31T10:00:00-14:00",
    "0001-01-01",
    "9999-12-31",
)
SORTS = ("created_at", "-created_at", "updated_at", "-updated_at", "alias", "-alias")


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("dates-gateway")
    asyncio.run(empty_database(database_url))
    started = start_gateway(gateway_environment(database_url, root / "data"), root / "gw.log")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.admin() as client:
        yield client


@pytest.fixture(scope="module")
def key_id(admin: httpx.Client) -> str:
    provider = unique("dates")
    created = admin.post(
        "/providers",
        json={"name": provider, "base_url": "http://127.0.0.1:9/v1", "models": [{"name": "m"}]},
    )
    assert created.status_code == 201, created.text
    ids = []
    for _ in range(3):  # more than one page of one
        key = admin.post(
            "/apikeys",
            json={
                "alias": unique("k"),
                "provider": provider,
                "model": "m",
                "key_code": "sk-x",
                "input_limit": 0,
                "output_limit": 0,
                "usage_limit": "reject",
            },
        )
        assert key.status_code == 201, key.text
        ids.append(key.json()["id"])
    return str(ids[0])


def _not_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("field", ["from", "to"])
def test_usage_period_at_the_calendar_edges_is_a_4xx(
    admin: httpx.Client, key_id: str, field: str, edge: str
) -> None:
    response = admin.get(f"/apikeys/{key_id}/usage", params={field: edge})
    _not_5xx(response)
    if response.status_code != 200:
        assert_problem(response)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("0001-01-01T00:00:00+14:00", "0001-01-02T00:00:00+14:00"),
        ("9999-12-30T00:00:00-14:00", "9999-12-31T23:59:59-14:00"),
        ("0001-01-01T00:00:00", "0001-01-01T00:00:01"),
        ("9999-12-31T00:00:00", "9999-12-31T23:59:59"),
    ],
)
def test_usage_period_wholly_at_an_edge_is_a_4xx_or_empty(
    admin: httpx.Client, key_id: str, start: str, end: str
) -> None:
    response = admin.get(f"/apikeys/{key_id}/usage", params={"from": start, "to": end})
    _not_5xx(response)
    if response.status_code != 200:
        assert_problem(response)
    else:
        assert response.json()["totals"]["requests"] == 0


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("sort", SORTS)
def test_key_cursor_decoding_to_an_edge_timestamp_is_a_4xx(
    admin: httpx.Client, key_id: str, sort: str, edge: str
) -> None:
    cursor = _cursor({"s": sort, "v": edge, "id": key_id})
    response = admin.get("/apikeys", params={"sort": sort, "cursor": cursor, "limit": 1})
    _not_5xx(response)
    if response.status_code != 200:
        assert_problem(response)


@pytest.mark.parametrize("sort", SORTS)
def test_tampered_key_cursors_are_a_4xx(admin: httpx.Client, key_id: str, sort: str) -> None:
    first = admin.get("/apikeys", params={"sort": sort, "limit": 1})
    assert first.status_code == 200, first.text
    cursor = first.json()["next_cursor"]
    assert cursor
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    tampered_values: list[object] = [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "+10000-01-01T00:00:00",
        "2024-13-45T99:99:99",
        "2024-01-01T00:00:00+25:00",
        "\x00",
        "x" * 10_000,
        10**30,
        -1,
        1.5e308,
        None,
        [],
        {},
        True,
    ]
    for value in tampered_values:
        for tampered in (
            {**payload, "v": value},
            {**payload, "id": value},
            {**payload, "s": value},
        ):
            response = admin.get("/apikeys", params={"sort": sort, "cursor": _cursor(tampered)})
            _not_5xx(response)
            if response.status_code != 200:
                assert_problem(response)
    for raw in (cursor[:-3], cursor + "!!", "%%%", "=" * 8, _cursor([1, 2]), _cursor("x")):
        response = admin.get("/apikeys", params={"sort": sort, "cursor": raw})
        _not_5xx(response)
        assert_problem(response)


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "\x00",
        "\udcff",
        "x" * 10_000,
        10**30,
        None,
        [],
        {"a": 1},
    ],
)
@pytest.mark.parametrize("path", ["/providers", "/audit"])
def test_provider_and_audit_cursors_that_decode_to_odd_values_are_not_a_5xx(
    admin: httpx.Client, key_id: str, path: str, value: object
) -> None:
    field = "after" if path == "/providers" else "before"
    try:
        cursor = _cursor({field: value})
    except UnicodeEncodeError:
        cursor = base64.urlsafe_b64encode(b'{"%s":"\\udcff"}' % field.encode()).decode()
    response = admin.get(path, params={"cursor": cursor, "limit": 1})
    _not_5xx(response)
    if response.status_code != 200:
        assert_problem(response)

"""``GET /apikeys`` writes its page straight from the rows (``service.KeyPage``), not
through ``ApiKeyPage``: the bytes must be the ones ``ApiKeyPage`` writes, and each
item the key ``GET /apikeys/{id}`` (``ApiKeyRead``) answers. Its statements run
outside a transaction (no BEGIN and COMMIT round trips)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from aigw.apikeys import service
from aigw.apikeys.schemas import ApiKeyPage, ApiKeyRead
from aigw.apikeys.search import KeyFilters
from aigw.budgets.periods import period_bounds
from aigw.config import Settings
from tests.conftest import key_body

ZONE = "America/St_Johns"  # a half-hour offset: budget periods end at odd UTC times
ALIASES = [
    "plain-key",
    "Ünïcode-Жук-éclair",
    'quote"back\\slash',
    "emoji-🚀-key",
    "html <b>&amp; /slash",
]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(budget_timezone=ZONE)


async def _seed(client: httpx.AsyncClient, db: str) -> list[dict[str, Any]]:
    created = []
    for i, alias in enumerate(ALIASES * 2):
        body = key_body(
            alias=f"{alias}-{i}",
            status="enabled" if i % 2 else "disabled",
            usage_limit="use_anyway" if i % 3 == 0 else "reject",
            output_limit=i * 7,
            rpm_limit=i,
            tpm_limit=i * 1000,
            budget_tokens=0 if i % 4 == 0 else 10_000 + i,
            budget_period=("day", "week", "month", "total")[i % 4],
        )
        response = await client.post("/apikeys", json=body)
        assert response.status_code == 201, response.text
        created.append(response.json())
    # Some use charged to the budgets: budget_used is not always 0.
    conn = await asyncpg.connect(db)
    try:
        now = datetime.now(UTC)
        for i, key in enumerate(created):
            if key["budget_tokens"] and i % 3:
                start, _ = period_bounds(key["budget_period"], now, ZoneInfo(ZONE))
                await conn.execute(
                    "INSERT INTO budget_counters (api_key_id, period_start, used) "
                    "VALUES ($1, $2, $3)",
                    uuid.UUID(key["id"]),
                    start,
                    100 + i,
                )
    finally:
        await conn.close()
    return created


@pytest.mark.usefixtures("provider")
async def test_a_page_is_what_apikeypage_writes(client: httpx.AsyncClient, db: str) -> None:
    created = await _seed(client, db)
    singles: dict[str, Any] = {}
    for key in created:
        response = await client.get(f"/apikeys/{key['id']}")
        assert response.status_code == 200
        singles[key["id"]] = response.json()
    assert any(s["budget_used"] for s in singles.values())
    assert any(s["budget_resets_at"] for s in singles.values())
    assert any(s["budget_tokens"] and s["budget_resets_at"] is None for s in singles.values())
    seen: set[str] = set()
    for params in (
        {"limit": "200"},
        {"sort": "alias", "limit": "3"},
        {"q": "жук", "sort": "-created_at"},
        {"q": 'quote"back', "status": "disabled"},
        {"q": "no-such-key"},
    ):
        cursor: str | None = None
        for _ in range(10):
            query = {**params, **({"cursor": cursor} if cursor else {})}
            response = await client.get("/apikeys", params=query)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            assert int(response.headers["content-length"]) == len(response.content)
            body = response.content
            # The bytes ApiKeyPage writes for these values, field order and all...
            assert ApiKeyPage.model_validate_json(body).model_dump_json().encode() == body
            page = response.json()
            # ...and the values ApiKeyRead has for each key on its own.
            for item in page["items"]:
                assert item == singles[item["id"]]
                seen.add(item["id"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == set(singles)


def test_an_item_has_every_field_of_apikeyread_in_its_order() -> None:
    """The fields a page's item is built with are ApiKeyRead's, in its order (a
    field added to ApiKeyRead without a column in the page's rows fails here)."""
    row = {column.key: f"value of {column.key}" for column in service.search.PAGE_COLUMNS}
    item = service._item(tuple(row.values()))
    assert list(item) == list(ApiKeyRead.model_fields)
    for name, value in item.items():
        assert value == row.get(name, {"budget_used": 0, "budget_resets_at": None}.get(name))


async def _state(db: str, backend: int) -> str:
    """What pg_stat_activity says *backend* is doing (seen from another connection)."""
    conn = await asyncpg.connect(db)
    try:
        state = await conn.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", backend)
    finally:
        await conn.close()
    return str(state)


@pytest.mark.usefixtures("provider")
async def test_a_search_runs_outside_a_transaction_and_leaves_none_behind(
    client: httpx.AsyncClient, app: Any, db: str
) -> None:
    """The search's statements run without BEGIN and COMMIT around them, and the
    connection goes back to the pool transactional as before."""
    assert (await client.post("/apikeys", json=key_body(alias="only-key"))).status_code == 201
    backend_pid = text("SELECT pg_backend_pid()")
    async with app.state.sessionmaker() as session:
        page = await service.search_api_keys(
            session, KeyFilters(q="only"), sort="alias", limit=5, cursor=None
        )
        assert [item["alias"] for item in page.items] == ["only-key"]
        backend = (await session.execute(backend_pid)).scalar_one()
        assert await _state(db, backend) == "idle"
        await session.commit()
    async with app.state.sessionmaker() as session:
        backend = (await session.execute(backend_pid)).scalar_one()
        assert await _state(db, backend) == "idle in transaction"

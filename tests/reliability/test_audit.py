"""The audit log: every change to a provider or a key leaves one row (who, what,
when, before/after, the request id), with no secret in it, readable and
filterable through ``GET /audit``; a change that fails leaves none.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import key_body
from tests.reliability.conftest import assert_problem

SECRET_FIELDS = {"key_code", "token", "token_hash", "key_code_ciphertext"}


async def _audit(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await client.get("/audit", params=query)
        assert page.status_code == 200, page.text
        items.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if not cursor:
            return items


def _walk(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in _walk(v))]
    if isinstance(value, list):
        return [s for v in value for s in _walk(v)]
    return [str(value)]


async def test_every_change_leaves_one_redacted_audit_row(
    client: httpx.AsyncClient, db: str
) -> None:
    started = datetime.now(UTC) - timedelta(seconds=5)
    secrets_seen: list[str] = []
    expected: list[tuple[str, str, str]] = []  # (entity_type, action, request id)

    def remember(response: httpx.Response, entity: str, action: str) -> dict[str, Any]:
        assert response.status_code in (200, 201, 204), response.text
        expected.append((entity, action, response.headers["x-aigw-request-id"]))
        return response.json() if response.content else {}

    provider = remember(
        await client.post(
            "/providers",
            json={"name": "audited", "base_url": "https://a.example/v1", "models": [{"name": "m"}]},
        ),
        "provider",
        "create",
    )
    remember(
        await client.patch(
            f"/providers/{provider['id']}", json={"models": [{"name": "m"}, {"name": "m2"}]}
        ),
        "provider",
        "update",
    )
    code = "sk-audit-secret-" + uuid.uuid4().hex
    secrets_seen.append(code)
    key = remember(
        await client.post(
            "/apikeys",
            json=key_body(alias="audited-key", provider="audited", model="m", key_code=code),
        ),
        "api_key",
        "create",
    )
    secrets_seen.append(key["token"])
    remember(
        await client.patch(f"/apikeys/{key['id']}", json={"input_limit": 5}), "api_key", "update"
    )
    new_code = "sk-audit-replacement-" + uuid.uuid4().hex
    secrets_seen.append(new_code)
    remember(
        await client.patch(f"/apikeys/{key['id']}", json={"key_code": new_code}),
        "api_key",
        "secret_replaced",
    )
    # A secret and a field at once: two rows, one per kind of change.
    third_code = "sk-audit-third-" + uuid.uuid4().hex
    secrets_seen.append(third_code)
    both = await client.patch(
        f"/apikeys/{key['id']}", json={"key_code": third_code, "status": "enabled"}
    )
    remember(both, "api_key", "update")
    expected.append(("api_key", "secret_replaced", both.headers["x-aigw-request-id"]))
    rotated = remember(await client.post(f"/apikeys/{key['id']}/token"), "api_key", "token_rotated")
    secrets_seen.append(rotated["token"])
    remember(await client.delete(f"/apikeys/{key['id']}"), "api_key", "delete")
    remember(await client.delete(f"/providers/{provider['id']}"), "provider", "delete")

    rows = await _audit(client)
    assert len(rows) == len(expected), [(r["entity_type"], r["action"]) for r in rows]
    # Newest first, so reversed: the changes in the order they were made.
    got = [(r["entity_type"], r["action"], r["request_id"]) for r in reversed(rows)]
    assert got == expected
    finished = datetime.now(UTC) + timedelta(seconds=5)
    for row in rows:
        assert row["actor"] == "admin"
        assert started <= datetime.fromisoformat(row["at"]) <= finished
        words = _walk(row["before"]) + _walk(row["after"])
        assert not SECRET_FIELDS & set(words), row
        for secret in secrets_seen:
            assert all(secret not in word for word in words), (secret, row)
        if row["action"] == "create":
            assert row["before"] is None and row["after"]["id"] == row["entity_id"]
        elif row["action"] == "delete":
            assert row["after"] is None and row["before"]["id"] == row["entity_id"]
        else:
            assert row["before"] is not None and row["after"] is not None
    by_action = {(r["entity_type"], r["action"]): r for r in rows}
    replaced = [r for r in rows if r["action"] == "secret_replaced"]
    assert len(replaced) == 2
    for row in replaced:
        assert set(row["before"]) == set(row["after"]) == {"key_code_masked"}
        assert row["before"]["key_code_masked"] != row["after"]["key_code_masked"]
        assert len(row["after"]["key_code_masked"]) <= 9
    rotation = by_action[("api_key", "token_rotated")]
    assert rotation["before"]["token_prefix"] != rotation["after"]["token_prefix"]
    assert rotated["token"].startswith(rotation["after"]["token_prefix"])
    updated = [r for r in rows if r["entity_type"] == "api_key" and r["action"] == "update"]
    assert {r["before"]["input_limit"] for r in updated} >= {1000}
    assert any(r["after"]["input_limit"] == 5 for r in updated)
    assert any(r["after"]["status"] == "enabled" for r in updated)
    # Filters: by entity, by id, by action; the key's history outlives the key.
    key_rows = await _audit(client, entity_type="api_key", entity_id=key["id"])
    assert len(key_rows) == 7
    assert {r["entity_id"] for r in key_rows} == {key["id"]}
    assert len(await _audit(client, entity_type="provider")) == 3
    assert len(await _audit(client, action="secret_replaced")) == 2
    assert await _audit(client, entity_id=str(uuid.uuid4())) == []
    # Nothing secret anywhere in the table either.
    conn = await asyncpg.connect(db)
    try:
        dump = "\n".join(
            row[0] for row in await conn.fetch("SELECT row_to_json(a)::text FROM audit_log a")
        )
    finally:
        await conn.close()
    for secret in secrets_seen:
        assert secret not in dump


async def test_failed_changes_leave_no_audit_row(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/providers",
        json={"name": "busy", "base_url": "https://a.example/v1", "models": [{"name": "m"}]},
    )
    provider = created.json()
    key = (
        await client.post("/apikeys", json=key_body(alias="busy-key", provider="busy", model="m"))
    ).json()
    before = await _audit(client)
    failures = [
        (
            "POST",
            "/providers",
            {"name": "BUSY", "base_url": "https://b.example", "models": [{"name": "m"}]},
            409,
        ),
        ("DELETE", f"/providers/{provider['id']}", None, 409),
        ("PATCH", f"/providers/{provider['id']}", {"models": [{"name": "other"}]}, 409),
        ("POST", "/apikeys", key_body(alias="BUSY-KEY", provider="busy", model="m"), 409),
        ("POST", "/apikeys", key_body(alias="x", provider="nope"), 422),
        ("PATCH", f"/apikeys/{key['id']}", {"model": "nope"}, 422),
        ("PATCH", f"/apikeys/{uuid.uuid4()}", {"status": "enabled"}, 404),
        ("DELETE", f"/apikeys/{uuid.uuid4()}", None, 404),
        ("POST", f"/apikeys/{uuid.uuid4()}/token", None, 404),
    ]
    for method, path, body, status in failures:
        assert_problem(await client.request(method, path, json=body), status)
    stale = {"If-Match": '"999"'}
    assert_problem(
        await client.patch(f"/apikeys/{key['id']}", json={"status": "enabled"}, headers=stale), 412
    )
    assert_problem(await client.delete(f"/apikeys/{key['id']}", headers=stale), 412)
    assert_problem(await client.post(f"/apikeys/{key['id']}/token", headers=stale), 412)
    assert await _audit(client) == before


async def test_idempotent_replay_is_not_a_second_change(client: httpx.AsyncClient) -> None:
    await client.post(
        "/providers",
        json={"name": "idem", "base_url": "https://a.example/v1", "models": [{"name": "m"}]},
    )
    body = key_body(alias="idem-key", provider="idem", model="m")
    headers = {"Idempotency-Key": "audit-" + uuid.uuid4().hex}
    first = await client.post("/apikeys", json=body, headers=headers)
    again = await client.post("/apikeys", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    rows = await _audit(client, entity_type="api_key")
    assert [r["action"] for r in rows] == ["create"]


async def test_audit_is_admin_only_and_validates_its_filters(
    anon: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    assert_problem(await anon.get("/audit"), 401)
    for query in ("entity_type=users", "entity_id=x", "action=drop", "limit=0", "cursor=%%%"):
        assert_problem(await client.get(f"/audit?{query}"), 422)

"""The /apikeys admin API end to end through the real app on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import key_body

pytestmark = pytest.mark.usefixtures("provider")


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/apikeys", json=key_body(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


async def count_keys(db: str) -> int:
    conn = await asyncpg.connect(db)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM api_keys"))
    finally:
        await conn.close()


# --- create -----------------------------------------------------------------


async def test_create_applies_seed_defaults_and_returns_token_once(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/apikeys",
        json={
            "alias": "  billing-bot  ",
            "provider": "openai-main",
            "model": "gpt-4o-mini",
            "key_code": "sk-proj-abcdefghijklmnop9aZ",
            "input_limit": 0,
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/apikeys/{body['id']}"
    assert response.headers["etag"] == '"1"'
    assert body["alias"] == "billing-bot"  # trimmed
    assert body["status"] == "disabled"
    assert body["usage_limit"] == "reject"
    assert body["output_limit"] == 0
    assert body["input_limit"] == 0
    assert body["key_code_masked"] == "sk-p…p9aZ"
    assert "key_code" not in body
    assert body["token"].startswith("aigw-") and len(body["token"]) >= 5 + 22
    assert body["token_prefix"] == body["token"][:13]
    assert body["version"] == 1

    fetched = (await client.get(f"/apikeys/{body['id']}")).json()
    assert "token" not in fetched
    assert fetched == {k: v for k, v in body.items() if k != "token"}


async def test_provider_name_and_alias_lookups_are_case_insensitive(
    client: httpx.AsyncClient,
) -> None:
    await create(client, alias="Team-A", provider="OPENAI-MAIN")
    duplicate = await client.post("/apikeys", json=key_body(alias="team-a"))
    assert duplicate.status_code == 409
    assert duplicate.headers["content-type"] == "application/problem+json"
    assert duplicate.json()["code"] == "alias_taken"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"alias": ""}, "alias"),
        ({"alias": "   "}, "alias"),
        ({"alias": "x" * 65}, "alias"),
        ({"alias": "bad\u0000alias"}, "alias"),
        ({"alias": 7}, "alias"),
        ({"input_limit": -1}, "input_limit"),
        ({"input_limit": 10_000_001}, "input_limit"),
        ({"input_limit": "100"}, "input_limit"),
        ({"input_limit": 1.5}, "input_limit"),
        ({"input_limit": True}, "input_limit"),
        ({"output_limit": -5}, "output_limit"),
        ({"status": "on"}, "status"),
        ({"usage_limit": "block"}, "usage_limit"),
        ({"key_code": ""}, "key_code"),
        ({"key_code": "x" * 4097}, "key_code"),
        ({"key_code": "sk-\nnewline"}, "key_code"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_invalid_create_is_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, db: str, overrides: dict[str, Any], field: str
) -> None:
    response = await client.post("/apikeys", json=key_body(**overrides))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["code"] == "validation_error"
    assert any(error["field"] == field for error in problem["errors"]), problem
    assert await count_keys(db) == 0


@pytest.mark.parametrize("missing", ["alias", "provider", "model", "key_code", "input_limit"])
async def test_required_fields_are_required(client: httpx.AsyncClient, missing: str) -> None:
    body = key_body()
    del body[missing]
    response = await client.post("/apikeys", json=body)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [missing]


async def test_unknown_provider_or_model_is_422(client: httpx.AsyncClient, db: str) -> None:
    unknown_provider = await client.post("/apikeys", json=key_body(provider="nope"))
    assert unknown_provider.status_code == 422
    assert unknown_provider.json()["code"] == "unknown_provider"
    unknown_model = await client.post("/apikeys", json=key_body(model="gpt-9"))
    assert unknown_model.status_code == 422
    assert unknown_model.json()["code"] == "unknown_model"
    assert await count_keys(db) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alias": "a", ',
        b'{"alias": "a", "input_limit": NaN}',
        b'{"alias": "a", "input_limit": Infinity}',
        b'{"alias": "\\ud800", "input_limit": 1}',
        b'{"alias": "\xff\xfe", "input_limit": 1}',
        b"[]",
        b"null",
        b"",
    ],
)
async def test_malformed_json_is_422_never_500(
    client: httpx.AsyncClient, db: str, raw: bytes
) -> None:
    response = await client.post(
        "/apikeys", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert await count_keys(db) == 0


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/apikeys", content=b"alias=a", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


async def test_body_over_limit_is_413(make_settings: Any, admin_headers: dict[str, str]) -> None:
    from aigw.app import create_app

    app = create_app(make_settings(max_body_bytes=2048))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        response = await http.post(
            "/apikeys", json=key_body(key_code="k" * 4000), headers=admin_headers
        )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


# --- auth ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-wrong-token", "Basic YWRtaW46YWRtaW4=", "Bearer", ""],
)
async def test_admin_routes_need_the_admin_token(
    anon: httpx.AsyncClient, authorization: str | None, db: str
) -> None:
    headers = {"authorization": authorization} if authorization is not None else {}
    for method, path in [
        ("GET", "/apikeys"),
        ("POST", "/apikeys"),
        ("GET", f"/apikeys/{uuid.uuid4()}"),
    ]:
        response = await anon.request(method, path, headers=headers, json=key_body())
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert await count_keys(db) == 0


async def test_unauthenticated_bad_body_is_401_not_422(anon: httpx.AsyncClient) -> None:
    response = await anon.post(
        "/apikeys", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


# --- read / search ----------------------------------------------------------------


async def test_unknown_or_malformed_id(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"/apikeys/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    malformed = await client.get("/apikeys/not-a-uuid")
    assert malformed.status_code == 422


async def test_search_matches_percent_and_underscore_literally(client: httpx.AsyncClient) -> None:
    for alias in ["100%-off", "1000-off", "snake_case", "snakeXcase", "back\\slash"]:
        await create(client, alias=alias)

    async def aliases(q: str) -> list[str]:
        response = await client.get("/apikeys", params={"q": q, "sort": "alias"})
        assert response.status_code == 200
        return [item["alias"] for item in response.json()["items"]]

    assert await aliases("%") == ["100%-off"]
    assert await aliases("0%") == ["100%-off"]
    assert await aliases("_") == ["snake_case"]
    assert await aliases("\\") == ["back\\slash"]
    assert await aliases("SNAKE") == ["snake_case", "snakeXcase"]
    assert await aliases("%_%") == []


async def test_filters_combine(client: httpx.AsyncClient) -> None:
    await create(client, alias="a1", status="enabled", usage_limit="use_anyway")
    await create(client, alias="a2", status="enabled", model="gpt-4")
    await create(client, alias="a3", status="disabled")

    async def aliases(**params: str) -> list[str]:
        response = await client.get("/apikeys", params={**params, "sort": "alias"})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == len(page["items"])
        return [item["alias"] for item in page["items"]]

    assert await aliases(status="enabled") == ["a1", "a2"]
    assert await aliases(status="enabled", usage_limit="reject") == ["a2"]
    assert await aliases(model="gpt-4") == ["a2"]
    assert await aliases(provider="OpenAI-Main", status="disabled") == ["a3"]
    assert await aliases(provider="other") == []


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "key_code"},
        {"sort": "alias;drop table api_keys"},
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"status": "maybe"},
        {"usage_limit": "sometimes"},
        {"cursor": "!!!"},
        {"cursor": "eyJhIjoxfQ"},
    ],
)
async def test_bad_search_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/apikeys", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in {"validation_error", "invalid_cursor"}


async def test_cursor_from_one_sort_is_refused_by_another(client: httpx.AsyncClient) -> None:
    for index in range(3):
        await create(client, alias=f"k{index}")
    first = (await client.get("/apikeys", params={"sort": "alias", "limit": 1})).json()
    response = await client.get(
        "/apikeys", params={"sort": "-created_at", "cursor": first["next_cursor"]}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_cursor"


async def seed_keys(db: str, provider: dict[str, Any], count: int) -> None:
    """Insert keys directly (fast), with timestamps that collide in groups to test tie-breaks."""
    model_id_sql = "SELECT id FROM provider_models WHERE provider_id = $1 AND name = 'gpt-4o-mini'"
    conn = await asyncpg.connect(db)
    try:
        model_id = await conn.fetchval(model_id_sql, uuid.UUID(provider["id"]))
        await conn.executemany(
            "INSERT INTO api_keys (id, alias, provider_id, model_id, status, key_code_ciphertext,"
            " key_code_masked, token_hash, token_prefix, input_limit, output_limit, usage_limit,"
            " created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, 'disabled', 'v1.x.y', '…', $5, 'aigw-x', 10, 0, 'reject',"
            " now() - make_interval(secs => $6), now() - make_interval(secs => $6))",
            [
                (
                    uuid.uuid4(),
                    f"Key-{i:04d}" if i % 2 else f"key-{i:04d}-b",
                    uuid.UUID(provider["id"]),
                    model_id,
                    uuid.uuid4().bytes + uuid.uuid4().bytes,
                    float(i // 7),  # groups of 7 share a timestamp
                )
                for i in range(count)
            ],
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "sort", ["alias", "-alias", "created_at", "-created_at", "updated_at", "-updated_at"]
)
async def test_paging_visits_every_key_once_in_order(
    client: httpx.AsyncClient, db: str, provider: dict[str, Any], sort: str
) -> None:
    await seed_keys(db, provider, 333)
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"sort": sort, "limit": 50}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/apikeys", params=params)).json()
        assert page["total"] == 333
        seen.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 7
    ids = [item["id"] for item in seen]
    assert len(ids) == len(set(ids)) == 333
    field = sort.lstrip("-")
    keys = [(item[field].lower() if field == "alias" else item[field], item["id"]) for item in seen]
    assert keys == sorted(keys, reverse=sort.startswith("-"))


# --- update / ETag ---------------------------------------------------------------------


async def test_patch_changes_only_sent_fields_and_bumps_version(client: httpx.AsyncClient) -> None:
    key = await create(client)
    response = await client.patch(
        f"/apikeys/{key['id']}",
        json={"status": "enabled", "output_limit": 512},
        headers={"if-match": '"1"'},
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["status"] == "enabled"
    assert updated["output_limit"] == 512
    assert updated["input_limit"] == key["input_limit"]
    assert updated["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert updated["updated_at"] > key["updated_at"]
    assert updated["created_at"] == key["created_at"]


async def test_patch_with_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    key = await create(client)
    await client.patch(f"/apikeys/{key['id']}", json={"input_limit": 5})
    stale = await client.patch(
        f"/apikeys/{key['id']}", json={"input_limit": 99}, headers={"if-match": '"1"'}
    )
    assert stale.status_code == 412
    assert stale.json()["code"] == "precondition_failed"
    assert (await client.get(f"/apikeys/{key['id']}")).json()["input_limit"] == 5


async def test_patch_validation(client: httpx.AsyncClient) -> None:
    key = await create(client)
    for body, code in [
        ({"alias": None}, "validation_error"),
        ({"input_limit": -1}, "validation_error"),
        ({"token": "aigw-x"}, "validation_error"),
        ({"model": "gpt-9"}, "unknown_model"),
        ({"provider": "ghost"}, "unknown_provider"),
    ]:
        response = await client.patch(f"/apikeys/{key['id']}", json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == code
    other = await create(client, alias="other")
    clash = await client.patch(f"/apikeys/{other['id']}", json={"alias": key["alias"].upper()})
    assert clash.status_code == 409
    assert clash.json()["code"] == "alias_taken"
    assert (await client.get(f"/apikeys/{key['id']}")).json()["version"] == 1


async def test_patch_key_code_replaces_secret(client: httpx.AsyncClient) -> None:
    key = await create(client, key_code="sk-old-0000000000001111")
    response = await client.patch(
        f"/apikeys/{key['id']}", json={"key_code": "sk-new-0000000000002222"}
    )
    assert response.status_code == 200
    assert response.json()["key_code_masked"] == "sk-n…2222"


async def test_fifty_concurrent_patches_with_one_etag_give_one_winner(
    client: httpx.AsyncClient,
) -> None:
    key = await create(client)
    responses = await asyncio.gather(
        *(
            client.patch(
                f"/apikeys/{key['id']}", json={"input_limit": n}, headers={"if-match": '"1"'}
            )
            for n in range(50)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1
    assert statuses.count(412) == 49
    final = (await client.get(f"/apikeys/{key['id']}")).json()
    assert final["version"] == 2


async def test_fifty_concurrent_creates_of_one_alias_give_one_201(
    client: httpx.AsyncClient, db: str
) -> None:
    responses = await asyncio.gather(
        *(client.post("/apikeys", json=key_body(alias="race")) for _ in range(50))
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 1
    assert statuses.count(409) == 49
    assert await count_keys(db) == 1


# --- idempotency ---------------------------------------------------------------------------


async def test_idempotent_retry_returns_the_same_result(client: httpx.AsyncClient, db: str) -> None:
    headers = {"idempotency-key": "create-team-a-1"}
    body = key_body()
    first = await client.post("/apikeys", json=body, headers=headers)
    second = await client.post("/apikeys", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert await count_keys(db) == 1

    other = await client.post("/apikeys", json={**body, "input_limit": 7}, headers=headers)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"


async def test_concurrent_idempotent_retries_create_once(
    client: httpx.AsyncClient, db: str
) -> None:
    body = key_body()
    responses = await asyncio.gather(
        *(
            client.post("/apikeys", json=body, headers={"idempotency-key": "same"})
            for _ in range(20)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["token"] for r in responses}) == 1
    assert await count_keys(db) == 1


async def test_idempotent_response_is_stored_sealed(client: httpx.AsyncClient, db: str) -> None:
    created = await client.post("/apikeys", json=key_body(), headers={"idempotency-key": "k-1"})
    token = created.json()["token"]
    conn = await asyncpg.connect(db)
    try:
        stored = await conn.fetchval("SELECT response_sealed FROM idempotency_records")
    finally:
        await conn.close()
    assert stored.startswith("v1.")
    assert token not in stored


# --- delete and token rotation --------------------------------------------------------------


async def test_delete_then_gone(client: httpx.AsyncClient) -> None:
    key = await create(client)
    stale = await client.delete(f"/apikeys/{key['id']}", headers={"if-match": '"9"'})
    assert stale.status_code == 412
    deleted = await client.delete(f"/apikeys/{key['id']}")
    assert deleted.status_code == 204
    assert (await client.get(f"/apikeys/{key['id']}")).status_code == 404
    assert (await client.delete(f"/apikeys/{key['id']}")).status_code == 404


async def test_rotation_issues_a_new_token_and_stores_only_its_hash(
    client: httpx.AsyncClient, db: str
) -> None:
    key = await create(client)
    rotated = await client.post(f"/apikeys/{key['id']}/token")
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["token"] != key["token"]
    assert new["token_prefix"] == new["token"][:13]
    assert new["version"] == 2
    conn = await asyncpg.connect(db)
    try:
        row = await conn.fetchrow("SELECT token_hash, token_prefix FROM api_keys")
    finally:
        await conn.close()
    assert len(row["token_hash"]) == 32
    assert new["token"].encode() not in row["token_hash"]
    assert (await client.post(f"/apikeys/{uuid.uuid4()}/token")).status_code == 404

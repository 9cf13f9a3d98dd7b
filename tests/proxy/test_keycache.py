"""The in-process key cache: loaded at start, kept fresh by LISTEN/NOTIFY, and
surviving the loss of its LISTEN connection."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from aigw.proxy.keycache import KeyCache
from tests.proxy.conftest import create_key, create_provider, wait_for


def cache(app: Any) -> KeyCache:
    keys: KeyCache = app.state.keys
    return keys


def lookup(app: Any, token: str) -> Any:
    return cache(app).get(app.state.hasher.hash(token))


async def test_changes_reach_the_cache_through_notify(app: Any, client: httpx.AsyncClient) -> None:
    await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client, input_limit=10, output_limit=5)
    token = key["token"]

    async def present() -> bool:
        return lookup(app, token) is not None

    await wait_for(present, 1.0)
    resolved = lookup(app, token)
    assert resolved.enabled and resolved.limits.input_limit == 10
    assert resolved.key_code.startswith("sk-upstream-")
    assert resolved.base_url == "http://127.0.0.1:9/v1" and resolved.model == "gpt-4o-mini"
    assert "sk-upstream" not in repr(resolved)  # the secret never shows in a repr

    response = await client.patch(f"/apikeys/{key['id']}", json={"status": "disabled"})
    assert response.status_code == 200

    async def disabled() -> bool:
        return not lookup(app, token).enabled

    assert await wait_for(disabled, 1.0) < 1.0

    response = await client.patch(f"/apikeys/{key['id']}", json={"output_limit": 7})
    assert response.status_code == 200

    async def new_limit() -> bool:
        return lookup(app, token).limits.output_limit == 7

    await wait_for(new_limit, 1.0)

    rotated = (await client.post(f"/apikeys/{key['id']}/token")).json()["token"]

    async def rotated_in() -> bool:
        return lookup(app, token) is None and lookup(app, rotated) is not None

    await wait_for(rotated_in, 1.0)

    assert (await client.delete(f"/apikeys/{key['id']}")).status_code == 204

    async def gone() -> bool:
        return lookup(app, rotated) is None

    await wait_for(gone, 1.0)


async def test_provider_change_reloads_its_keys(app: Any, client: httpx.AsyncClient) -> None:
    provider = await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client)

    async def present() -> bool:
        return lookup(app, key["token"]) is not None

    await wait_for(present, 1.0)
    response = await client.patch(
        f"/providers/{provider['id']}", json={"base_url": "http://127.0.0.1:10/v2"}
    )
    assert response.status_code == 200, response.text

    async def moved() -> bool:
        return lookup(app, key["token"]).base_url == "http://127.0.0.1:10/v2"

    await wait_for(moved, 1.0)


async def test_lost_listen_connection_reconnects_and_reloads(
    app: Any, client: httpx.AsyncClient, db: str
) -> None:
    await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client)

    async def present() -> bool:
        return lookup(app, key["token"]) is not None

    await wait_for(present, 1.0)
    reloads = cache(app).reloads

    conn = await asyncpg.connect(db)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'aigw-keycache' AND datname = current_database()"
        )
        assert killed >= 1
        # The cache keeps serving meanwhile.
        assert lookup(app, key["token"]) is not None
        # A change while LISTEN may be down: the reload after reconnecting catches it.
        await conn.execute("UPDATE api_keys SET status = 'disabled' WHERE id = $1", key["id"])
    finally:
        await conn.close()

    async def reloaded_and_disabled() -> bool:
        resolved = lookup(app, key["token"])
        return cache(app).reloads > reloads and resolved is not None and not resolved.enabled

    await wait_for(reloaded_and_disabled, 5.0)
    assert cache(app).listening


async def test_a_change_to_each_contracted_table_reaches_the_cache(
    app: Any, client: httpx.AsyncClient, db: str
) -> None:
    """Plain SQL, as an operator might write it: the triggers, not the API, notify."""
    provider = await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client)
    token = key["token"]

    async def present() -> bool:
        return lookup(app, token) is not None

    await wait_for(present, 1.0)

    async def reloaded_after(sql: str, *args: Any) -> None:
        before = cache(app).reloads
        await conn.execute(sql, *args)

        async def reloaded() -> bool:
            return cache(app).reloads > before

        await wait_for(reloaded, 2.0)

    conn = await asyncpg.connect(db)
    try:
        # providers: update (the key's upstream moves), insert, delete.
        await conn.execute(
            "UPDATE providers SET base_url = 'http://127.0.0.1:10/v2' WHERE id = $1",
            provider["id"],
        )

        async def moved() -> bool:
            return lookup(app, token).base_url == "http://127.0.0.1:10/v2"

        await wait_for(moved, 2.0)
        other = "00000000-0000-4000-8000-000000000001"
        await reloaded_after(
            "INSERT INTO providers (id, name, kind, base_url) "
            "VALUES ($1, 'other', 'openai', 'http://127.0.0.1:11')",
            other,
        )
        await reloaded_after("DELETE FROM providers WHERE id = $1", other)

        # provider_models: update (the key's encoding changes), insert, delete.
        await conn.execute(
            "UPDATE provider_models SET encoding = 'cl100k_base' WHERE provider_id = $1",
            provider["id"],
        )

        async def re_encoded() -> bool:
            return lookup(app, token).encoding == "cl100k_base"

        await wait_for(re_encoded, 2.0)
        await reloaded_after(
            "INSERT INTO provider_models (provider_id, id, name, encoding) "
            "VALUES ($1, $2, 'extra', 'o200k_base')",
            provider["id"],
            other,
        )
        await reloaded_after("DELETE FROM provider_models WHERE id = $1", other)

        # api_keys: insert (above, through the API), update, delete.
        await conn.execute("UPDATE api_keys SET input_limit = 42 WHERE id = $1", key["id"])

        async def new_limit() -> bool:
            return lookup(app, token).limits.input_limit == 42

        await wait_for(new_limit, 2.0)
        await conn.execute("DELETE FROM api_keys WHERE id = $1", key["id"])

        async def gone() -> bool:
            return lookup(app, token) is None

        await wait_for(gone, 2.0)
    finally:
        await conn.close()


async def test_a_new_keys_encoding_is_loaded_before_the_key_is_served(
    app: Any, client: httpx.AsyncClient
) -> None:
    """Issue 15: no request waits for its encoding to load; the key cache loads it
    (off the loop) when it learns of the key, before serving it."""
    assert "cl100k_base" not in app.state.encoders.names  # no key counts with it yet
    await create_provider(client, "http://127.0.0.1:9/v1", models=("gpt-4",))
    key = await create_key(client, model="gpt-4")

    async def present() -> bool:
        return lookup(app, key["token"]) is not None

    await wait_for(present, 5.0)
    assert lookup(app, key["token"]).encoding == "cl100k_base"
    assert "cl100k_base" in app.state.encoders.names

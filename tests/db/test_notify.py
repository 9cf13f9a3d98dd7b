"""The key-change NOTIFY contract (aigw.db.notify) is what the migrated database does."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from pathlib import Path

import asyncpg

from aigw.db import notify

OPERATIONS = ("INSERT", "UPDATE", "DELETE")


async def test_the_migrated_database_installs_the_contract(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        body = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = $1", notify.FUNCTION)
        # Other triggers (the search counters of migration 0007) are not this contract.
        triggers = await conn.fetch(
            "SELECT event_object_table, event_manipulation, action_timing, action_orientation,"
            " action_statement FROM information_schema.triggers"
            " WHERE trigger_schema = current_schema() AND action_statement LIKE $1",
            f"%{notify.FUNCTION}%",
        )
    finally:
        await conn.close()
    assert body == notify.function_body()
    assert {tuple(row) for row in triggers} == {
        (table, operation, "AFTER", "ROW", f"EXECUTE FUNCTION {notify.FUNCTION}()")
        for table in notify.TABLES
        for operation in OPERATIONS
    }


async def test_every_change_to_a_contracted_table_notifies_its_payload(db: str) -> None:
    """Payloads written out by hand from the contract's documented shape."""
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(db)
    writer = await asyncpg.connect(db)

    async def next_payload() -> str:
        return await asyncio.wait_for(received.get(), 5.0)

    try:
        await listener.add_listener(
            notify.CHANNEL, lambda _c, _p, _ch, payload: received.put_nowait(payload)
        )
        provider, model, key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        statements = [
            (
                "INSERT INTO providers (id, name, kind, base_url) VALUES ($1, 'p', 'openai', 'http://x')",
                provider,
                f"providers:{provider}",
            ),
            (
                "INSERT INTO provider_models (id, provider_id, name, encoding)"
                " VALUES ($1, (SELECT id FROM providers), 'm', 'o200k_base')",
                model,
                f"providers:{provider}",
            ),
            (
                "INSERT INTO api_keys (id, alias, provider_id, model_id, key_code_ciphertext,"
                " key_code_masked, token_hash, token_prefix, input_limit)"
                " VALUES ($1, 'k', (SELECT id FROM providers), (SELECT id FROM provider_models),"
                " 'x', 'x', '\\x00'::bytea, 'x', 0)",
                key,
                f"api_keys:{key}",
            ),
            ("UPDATE api_keys SET status = 'enabled' WHERE id = $1", key, f"api_keys:{key}"),
            (
                "UPDATE provider_models SET encoding = 'cl100k_base' WHERE id = $1",
                model,
                f"providers:{provider}",
            ),
            (
                "UPDATE providers SET base_url = 'http://y' WHERE id = $1",
                provider,
                f"providers:{provider}",
            ),
            ("DELETE FROM api_keys WHERE id = $1", key, f"api_keys:{key}"),
            ("DELETE FROM provider_models WHERE id = $1", model, f"providers:{provider}"),
            ("DELETE FROM providers WHERE id = $1", provider, f"providers:{provider}"),
        ]
        for sql, row_id, expected in statements:
            await writer.execute(sql, row_id)
            assert await next_payload() == expected, sql
        assert received.empty()
    finally:
        await writer.close()
        await listener.close()


def test_payloads_parse_into_changes_and_foreign_ones_do_not() -> None:
    row_id = uuid.uuid4()
    assert notify.parse_payload(f"api_keys:{row_id}") == notify.Change("api_keys", row_id)
    assert notify.parse_payload("api_keys:not-an-id") is None
    assert notify.parse_payload("") is None


def test_the_migration_that_installs_the_triggers_renders_the_contract() -> None:
    """Migrations keep their own copy of the SQL (history does not import code that
    may change); a contract change comes with a new migration, named here."""
    path = Path(__file__).parents[2] / "migrations" / "versions" / "0001_initial_schema.py"
    spec = importlib.util.spec_from_file_location("migration_0001", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert notify.trigger_sql() == migration._NOTIFY_SQL

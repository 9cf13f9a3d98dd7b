"""Every migration goes down as well as up: on a database of its own, all the way
to nothing and back to head; 0009's downgrade gives ``api_keys`` its term
indexes back, and 0008's gives the budget functions 0005's bodies back."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic import command
from sqlalchemy.engine import make_url

from aigw.db.engine import libpq_url
from aigw.db.migrate import alembic_config, upgrade
from aigw.db.revision import database_revisions, head_revisions, versions_dir


def _on(url: str, database: str) -> str:
    return make_url(libpq_url(url)).set(database=database).render_as_string(hide_password=False)


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _function_sources(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT proname, prosrc FROM pg_proc WHERE proname LIKE 'aigw_budget_%'"
        )
        return {row["proname"]: row["prosrc"] for row in rows}
    finally:
        await conn.close()


async def _indexes(url: str, table: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1", table)
        return {row["indexname"] for row in rows}
    finally:
        await conn.close()


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        )
        return {row["tablename"] for row in rows}
    finally:
        await conn.close()


def test_every_migration_goes_down_and_up_again(database_url: str) -> None:
    name = f"aigw_updown_{uuid.uuid4().hex[:10]}"
    server = _on(database_url, "postgres")
    asyncio.run(_execute(server, f'CREATE DATABASE "{name}"'))
    url = _on(database_url, name)
    config = alembic_config(url)
    versions = versions_dir()
    assert versions is not None
    try:
        upgrade(url)
        at_head = asyncio.run(_function_sources(url))
        assert "Sorted here" in at_head["aigw_budget_settle"]  # 0008's lock order

        term_indexes = {"ix_api_keys_lower_alias_trgm", "ix_api_keys_alias_short_grams"}
        assert "api_key_search" in asyncio.run(_tables(url))
        assert not term_indexes & asyncio.run(_indexes(url, "api_keys"))
        command.downgrade(config, "0008")
        assert "api_key_search" not in asyncio.run(_tables(url))
        assert term_indexes <= asyncio.run(_indexes(url, "api_keys"))

        command.downgrade(config, "0007")
        before = asyncio.run(_function_sources(url))
        assert "The caller sends the batch sorted" in before["aigw_budget_settle"]
        assert "FOR r IN\n        DELETE FROM budget_leases" in before["aigw_budget_reserve"]

        command.downgrade(config, "0004")
        assert asyncio.run(_function_sources(url)) == {}
        assert "budget_counters" not in asyncio.run(_tables(url))

        command.downgrade(config, "base")
        assert asyncio.run(_tables(url)) == set()

        upgrade(url)
        assert asyncio.run(database_revisions(url)) == head_revisions(versions)
        assert asyncio.run(_function_sources(url)) == at_head
    finally:
        asyncio.run(_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

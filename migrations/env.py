"""Async alembic environment; the URL comes from aigw's settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from aigw.db.engine import async_url
from aigw.db.models import metadata

config = context.config


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if not url:
        from aigw.config import Settings

        url = Settings().database_url
    if not url:
        raise RuntimeError("set AIGW_DATABASE_URL (or run `aigw migrate`, which starts the embedded server)")
    return async_url(url)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        # Several gateway processes may start at once; one migrates, the others wait.
        context.execute("SELECT pg_advisory_xact_lock(7243901)")
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())

"""The async engine and session factory, built once per process in the lifespan."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from aigw.config import Settings


def async_url(url: str) -> str:
    """Accept ``postgresql://`` URLs (as libpq and embedded servers print them)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same server as a plain ``postgresql://`` URL (for asyncpg.connect)."""
    return (
        make_url(async_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)
    )


def create_engine(settings: Settings) -> AsyncEngine:
    if not settings.database_url:
        raise RuntimeError("AIGW_DATABASE_URL is not set and no embedded server was started")
    return create_async_engine(
        async_url(settings.database_url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_timeout,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.db_timeout,
            # Every statement, the pool's pre-ping and rollbacks included, within
            # AIGW_DB_TIMEOUT: a frozen (not dead) server must make the admin API
            # answer 503 in that time, not hang.
            "command_timeout": settings.db_timeout,
            "server_settings": {"application_name": "aigw"},
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

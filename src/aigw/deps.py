"""Request dependencies, named once as ``Annotated`` aliases."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.budgets.backend import redis_counters
from aigw.budgets.redis_store import RedisBudgetStore
from aigw.config import Settings
from aigw.crypto import KeyRing, TokenHasher
from aigw.errors import ServiceUnavailable
from aigw.etag import parse_if_match
from aigw.routing import check_admin_token

log = logging.getLogger("aigw.deps")

_bearer = HTTPBearer(auto_error=False, description="The admin token (AIGW_ADMIN_TOKEN).")


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_keyring(request: Request) -> KeyRing:
    keyring: KeyRing = request.app.state.keyring
    return keyring


def get_hasher(request: Request) -> TokenHasher:
    hasher: TokenHasher = request.app.state.hasher
    return hasher


def _is_connectivity_error(exc: BaseException) -> bool:
    if isinstance(exc, (PoolTimeout, InterfaceError, OSError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(exc, OperationalError) or "connection" in type(exc.orig).__name__.lower()
    return False


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The only place that commits or rolls back."""
    session: AsyncSession = request.app.state.sessionmaker()
    try:
        yield session
        await session.commit()
    except BaseException as exc:
        await session.rollback()
        if _is_connectivity_error(exc):
            log.warning("database unavailable: %s", type(exc).__name__)
            raise ServiceUnavailable() from None
        raise
    finally:
        await session.close()


def budget_counters(request: Request) -> RedisBudgetStore | None:
    """The Redis store when the budget counters live there (else they are read
    from PostgreSQL in the request's session): docs/budgets.md."""
    return redis_counters(getattr(request.app.state, "budget_store", None))


async def get_budget_counters(request: Request) -> RedisBudgetStore | None:
    # async: a plain-def dependency would cost a hop to the thread pool.
    return budget_counters(request)


async def require_admin(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The admin bearer token (also checked by :class:`aigw.routing.AdminRoute` before
    the body is read); returns the actor recorded in the audit log."""
    check_admin_token(request)
    return "admin"


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# scope="function": commit before the response is sent, so a 201 means durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
AdminDep = Annotated[str, Depends(require_admin)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
HasherDep = Annotated[TokenHasher, Depends(get_hasher)]
IfMatchDep = Annotated[int | None, Depends(parse_if_match)]
BudgetCountersDep = Annotated[RedisBudgetStore | None, Depends(get_budget_counters)]

"""What :mod:`aigw.budgets.guard` needs of a budget store, and which store a
process uses: Redis when ``AIGW_REDIS_URL`` is set, else PostgreSQL (the
default; nothing requires Redis). docs/budgets.md, "PostgreSQL or Redis".
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from aigw.budgets.redis_store import RedisBudgetStore
from aigw.budgets.settling import Settlement
from aigw.budgets.store import BudgetStore
from aigw.config import Settings
from aigw.db.engine import libpq_url


class BudgetBackend(Protocol):
    """The shared counters (both stores raise ``StoreUnavailable`` when they do not
    answer within ``timeout``)."""

    lease_seconds: float
    timeout: float

    def start(self) -> None: ...

    async def reserve(
        self,
        api_key_id: uuid.UUID,
        period_start: datetime,
        budget: int,
        lease: uuid.UUID,
        want: int,
        minimum: int,
    ) -> tuple[int, int]: ...

    async def free(self, api_key_id: uuid.UUID, period_start: datetime, budget: int) -> int: ...

    async def take_rate(
        self,
        api_key_id: uuid.UUID,
        window_start: datetime,
        rpm: int,
        tpm: int,
        tokens: int,
        *,
        enforce: bool,
    ) -> bool: ...

    def settle(self, settlement: Settlement) -> None: ...

    async def flush(self, grace: float) -> None: ...

    async def aclose(self, grace: float) -> None: ...


def create_budget_store(settings: Settings) -> BudgetStore | RedisBudgetStore:
    """The store *settings* ask for; it connects on first use only."""
    if settings.redis_url is not None:
        return RedisBudgetStore(
            settings.redis_url.get_secret_value(),
            prefix=settings.redis_prefix,
            lease_seconds=settings.budget_lease_seconds,
            timeout=settings.budget_store_timeout,
            max_connections=settings.db_pool_size,
        )
    assert settings.database_url is not None
    return BudgetStore(
        libpq_url(settings.database_url),
        lease_seconds=settings.budget_lease_seconds,
        timeout=settings.budget_store_timeout,
        max_connections=settings.db_pool_size,
    )


def redis_counters(store: object) -> RedisBudgetStore | None:
    """The store when the counters live in Redis (the admin reads go there), else
    None (they are rows in PostgreSQL, read in the admin's transaction)."""
    return store if isinstance(store, RedisBudgetStore) else None

"""The shared counters, in PostgreSQL: one statement per decision.

Reservations, extensions and rate checks are each one call of a SQL function
(migrations 0005 and 0008) that takes the key's counter row lock, so any number
of gateway processes on one database admit together no more than a budget.
Settlements are queued and written in batches by one task (a client that
leaves cannot cancel them); until written, their leases stay renewed
(:mod:`aigw.budgets.settling`, shared with the Redis store).

Leases: every reservation is a row in ``budget_leases`` with an expiry a
heartbeat task pushes forward every third of ``lease_seconds`` for all the
leases this process holds. A process that dies (SIGKILL, OOM, a lost host)
stops renewing; once its leases expire, the next reservation for the key
returns their tokens.

Lock order (migration 0008), which makes a deadlock between gateway
connections impossible:

1. counter rows (``budget_counters``) by (key, period) ascending; a
   reservation locks its period's counter and those of the key's expired
   leases, a settlement the counters of its whole batch, before anything else;
2. then lease rows (``budget_leases``), only under a counter already held;
3. then rate windows (``rate_windows``) by (key, window) ascending.

Renewal is the exception: it takes lease rows and no counter, and never waits
(``FOR UPDATE SKIP LOCKED``). A lease it skips because another transaction
holds it (being settled, reclaimed or extended) is renewed next round; leases
last three renewal intervals, so one skipped round costs nothing.

A call that fails or takes longer than ``timeout`` raises
:class:`StoreUnavailable`; :mod:`aigw.budgets.guard` decides what that means
per policy.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

import asyncpg

from aigw.budgets.settling import Settlement, SettlingStore, StoreUnavailable

__all__ = ["BudgetStore", "Settlement", "StoreUnavailable"]

log = logging.getLogger("aigw.budgets")

_RESERVE = "SELECT granted, free FROM aigw_budget_reserve($1, $2, $3, $4, $5, $6, $7)"
_RATE = "SELECT allowed, requests, tokens FROM aigw_rate_take($1, $2, $3, $4, $5, $6)"
_SETTLE = (
    "SELECT aigw_budget_settle($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int8[], "
    "$5::timestamptz[], $6::int8[])"
)
_RENEW = (
    "WITH renewed AS (UPDATE budget_leases "
    "SET expires_at = clock_timestamp() + make_interval(secs => $2) "
    "WHERE id IN (SELECT id FROM budget_leases WHERE id = ANY($1::uuid[]) "
    "ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING 1) "
    "SELECT count(*) AS renewed FROM renewed"
)
_NO_TIME = datetime.min.replace(tzinfo=UTC)
_NO_LEASE = uuid.UUID(int=0)


def _batch_order(s: Settlement) -> tuple[uuid.UUID, datetime, uuid.UUID]:
    return (s.api_key_id, s.period_start or _NO_TIME, s.lease or _NO_LEASE)


class BudgetStore(SettlingStore):
    """The PostgreSQL store; one per process. Connections open on first use, so a
    gateway whose keys have no budgets never opens one."""

    def __init__(
        self,
        dsn: str,
        *,
        lease_seconds: float = 30.0,
        timeout: float = 5.0,
        max_connections: int = 10,
    ) -> None:
        super().__init__()
        self._dsn = dsn
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self._max_connections = max_connections
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._live: set[uuid.UUID] = set()

    def __repr__(self) -> str:
        return f"BudgetStore(live_leases={len(self._live)}, queued={len(self._queue)})"

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._max_connections,
                        timeout=self.timeout,
                        server_settings={"application_name": "aigw-budgets"},
                    )
        return self._pool

    async def _call(self, sql: str, *args: object) -> asyncpg.Record | None:
        try:
            async with asyncio.timeout(self.timeout):
                pool = await self._get_pool()
                return await pool.fetchrow(sql, *args)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    async def reserve(
        self,
        api_key_id: uuid.UUID,
        period_start: datetime,
        budget: int,
        lease: uuid.UUID,
        want: int,
        minimum: int,
    ) -> tuple[int, int]:
        """Reserve up to *want* tokens (at least *minimum*, else nothing) under
        *lease*; returns ``(granted, free before)``. Calling again with the same
        lease extends it."""
        row = await self._call(
            _RESERVE, api_key_id, period_start, budget, lease, want, minimum, self.lease_seconds
        )
        assert row is not None
        granted, free = int(row["granted"]), int(row["free"])
        if granted:
            self._live.add(lease)
        return granted, free

    async def free(self, api_key_id: uuid.UUID, period_start: datetime, budget: int) -> int:
        """What is left of the budget now (reserving nothing)."""
        row = await self._call(_RESERVE, api_key_id, period_start, budget, None, 0, 0, 0.0)
        assert row is not None
        return int(row["free"])

    async def take_rate(
        self,
        api_key_id: uuid.UUID,
        window_start: datetime,
        rpm: int,
        tpm: int,
        tokens: int,
        *,
        enforce: bool,
    ) -> bool:
        """Count one request of *tokens* input tokens in the window; returns whether
        it was within the rates (when *enforce* and it was not, nothing is counted)."""
        row = await self._call(_RATE, api_key_id, window_start, rpm, tpm, tokens, enforce)
        assert row is not None
        return bool(row["allowed"])

    async def _write(self, batch: list[Settlement]) -> None:
        # aigw_budget_settle sorts too (0008); sorted here, a batch reads the same in logs.
        batch.sort(key=_batch_order)
        await self._call(
            _SETTLE,
            [s.lease for s in batch],
            [s.api_key_id for s in batch],
            [s.period_start for s in batch],
            [s.charge for s in batch],
            [s.window_start for s in batch],
            [s.window_tokens for s in batch],
        )

    def _forget(self, lease: uuid.UUID) -> None:
        self._live.discard(lease)

    async def renew(self) -> int:
        """Push the expiry of every lease this process holds one lease period ahead;
        returns how many were renewed. Never waits for a lease another transaction
        holds (see the module docstring): that one is renewed next round."""
        if not self._live:
            return 0
        row = await self._call(_RENEW, list(self._live), self.lease_seconds)
        assert row is not None
        return int(row["renewed"])

    async def _renew_forever(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except StoreUnavailable as exc:
                log.warning("budget lease renewal failed (%s)", exc)

    async def _disconnect(self) -> None:
        if self._pool is not None:
            await asyncio.wait_for(self._pool.close(), 5.0)

"""What both budget stores share: the settlement queue and the one task that
writes it in batches, the lease heartbeat's task, :meth:`~SettlingStore.flush`
and :meth:`~SettlingStore.aclose`.

A store — :class:`aigw.budgets.store.BudgetStore` (PostgreSQL) or
:class:`aigw.budgets.redis_store.RedisBudgetStore` (Redis) — says how a batch
is written (``_write``), how a settled lease leaves the set the heartbeat renews
(``_forget``), what the heartbeat does (``_renew_forever``) and how its
connections close (``_disconnect``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger("aigw.budgets")

_SETTLE_BATCH = 500


class StoreUnavailable(Exception):
    """The shared store did not answer (down, unreachable, or too slow)."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one finished request owes: ``charge`` tokens to its budget period (and
    its lease, if it held one, released), ``window_tokens`` to its rate window."""

    api_key_id: uuid.UUID
    lease: uuid.UUID | None
    period_start: datetime | None
    charge: int
    window_start: datetime | None
    window_tokens: int


class SettlingStore(abc.ABC):
    """Settlements are queued (:meth:`settle` cannot fail or block, so a client
    that leaves cannot cancel one) and written by one task; until written, their
    leases stay in the store's live set and keep being renewed."""

    def __init__(self) -> None:
        self._queue: list[Settlement] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.settled = 0

    @abc.abstractmethod
    async def _write(self, batch: list[Settlement]) -> None:
        """Write *batch* in one call; raise :class:`StoreUnavailable` if it fails."""

    @abc.abstractmethod
    def _forget(self, lease: uuid.UUID) -> None:
        """Stop renewing *lease*: its settlement is written."""

    @abc.abstractmethod
    async def _renew_forever(self) -> None:
        """The heartbeat: renew this process's leases every third of their life."""

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Close the store's connections (errors suppressed by the caller)."""

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._settle_forever(), name="aigw-budget-settle"),
            asyncio.create_task(self._renew_forever(), name="aigw-budget-leases"),
        ]

    def settle(self, settlement: Settlement) -> None:
        """Queue a settlement; it cannot fail or block (written by the settle task)."""
        self._queue.append(settlement)
        self._wake.set()

    async def _settle_forever(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[:_SETTLE_BATCH]
                try:
                    await self._write(batch)
                except StoreUnavailable as exc:
                    # The leases stay renewed meanwhile; nothing is lost unless the
                    # process dies too (then the leases expire and give back).
                    log.warning("budget settlement failed (%s); retrying in %.2fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                del self._queue[: len(batch)]
                for s in batch:
                    if s.lease is not None:
                        self._forget(s.lease)
                self.settled += len(batch)

    async def flush(self, grace: float) -> None:
        """Wait until every queued settlement is written (or *grace* seconds pass)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._queue:
                    self._wake.set()
                    await asyncio.sleep(0.01)

    async def aclose(self, grace: float) -> None:
        await self.flush(grace)
        if self._queue:
            log.error("%d budget settlements not written at shutdown", len(self._queue))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._disconnect()

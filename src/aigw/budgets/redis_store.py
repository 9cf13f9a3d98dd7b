"""The shared counters in Redis (``AIGW_REDIS_URL``): one script call per decision.

The same surface and semantics as :class:`aigw.budgets.store.BudgetStore` (the
PostgreSQL store): :meth:`reserve` (and extend), :meth:`free`,
:meth:`take_rate`, :meth:`settle` (queued, written in batches by one task),
:meth:`flush`, :meth:`aclose` (those three shared with it:
:mod:`aigw.budgets.settling`), a heartbeat that renews this process's leases,
and :class:`StoreUnavailable` for a call that fails or takes longer than
``timeout``. The scripts and the key layout are in
:mod:`aigw.budgets.redis_scripts`; docs/budgets.md has the why.

Connections: one blocking pool of ``max_connections``, created on first use in
the running event loop (a gateway whose keys have no budgets never connects).
A caller waits for a free connection at most ``timeout``; a connection that
does not answer within ``timeout`` is dropped. Nothing is cancelled inside
redis-py: its own socket and pool timeouts bound every call, so a cancelled
task never leaves a connection checked out.

Counters expire (``PEXPIREAT``) 33 days after their period starts — after the
longest period (a month) has ended, whatever the period; a ``total`` counter
never expires. Rate windows expire two minutes after they start. Lease hashes
and sets vanish when their last lease is settled or reclaimed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aigw.budgets import redis_scripts
from aigw.budgets.periods import EPOCH
from aigw.budgets.settling import Settlement, SettlingStore, StoreUnavailable

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("aigw.budgets")

_RENEW_BATCH = 1000
# Long enough for any period to have ended (a month is at most 31 days and an
# hour of daylight saving), plus margin for requests settling late.
COUNTER_LIFETIME = timedelta(days=33)
WINDOW_LIFETIME = timedelta(minutes=2)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class RedisBudgetStore(SettlingStore):
    """The Redis store; one per process (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "aigw:",
        lease_seconds: float = 30.0,
        timeout: float = 5.0,
        max_connections: int = 10,
    ) -> None:
        super().__init__()
        self._url = url
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self._max_connections = max_connections
        self._client: aioredis.Redis | None = None
        # redis is imported with the first client (an aigw without a Redis store
        # never holds it: ~6 MB, issue 15); its errors join these then.
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._scripts: dict[str, Any] = {}
        self._live: dict[uuid.UUID, str] = {}  # lease -> its expiry set

    def __repr__(self) -> str:
        return f"RedisBudgetStore(live_leases={len(self._live)}, queued={len(self._queue)})"

    def _base(self, api_key_id: uuid.UUID) -> str:
        return f"{self.prefix}{{{api_key_id}}}"

    def period_keys(self, api_key_id: uuid.UUID, period_start: datetime) -> list[str]:
        """``[counter, leases, expiry]`` of a key's period."""
        base, start = self._base(api_key_id), int(period_start.timestamp())
        return [f"{base}:b:{start}", f"{base}:l:{start}", f"{base}:e:{start}"]

    def window_key(self, api_key_id: uuid.UUID, window_start: datetime) -> str:
        return f"{self._base(api_key_id)}:r:{int(window_start.timestamp())}"

    @staticmethod
    def counter_expiry(period_start: datetime) -> int:
        """When a period's counter may go (epoch ms); 0: never (``total``)."""
        return 0 if period_start <= EPOCH else _ms(period_start + COUNTER_LIFETIME)

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError

            self._errors = (RedisError, OSError, TimeoutError)
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self.timeout,  # waiting for a free connection
                socket_timeout=self.timeout,  # waiting for an answer
                socket_connect_timeout=self.timeout,
                client_name="aigw-budgets",
            )
            client = aioredis.Redis.from_pool(pool)
            self._scripts = {
                name: client.register_script(getattr(redis_scripts, name))
                for name in ("RESERVE", "RATE", "SETTLE", "RENEW", "RAISE_USED")
            }
            self._client = client
        return self._client

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        """One script call (EVALSHA; the script is loaded again after a NOSCRIPT)."""
        client = self._connect()
        try:
            return await self._scripts[script](keys=list(keys), args=list(args), client=client)
        except self._errors as exc:
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
        keys = self.period_keys(api_key_id, period_start)
        granted, free = await self._run(
            "RESERVE",
            keys,
            [
                budget,
                str(lease),
                want,
                minimum,
                int(self.lease_seconds * 1000),
                self.counter_expiry(period_start),
            ],
        )
        if granted:
            self._live[lease] = keys[2]
        return int(granted), int(free)

    async def free(self, api_key_id: uuid.UUID, period_start: datetime, budget: int) -> int:
        """What is left of the budget now (reserving nothing)."""
        keys = self.period_keys(api_key_id, period_start)
        _, free = await self._run("RESERVE", keys, [budget, "", 0, 0, 0, 0])
        return int(free)

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
        allowed, _, _ = await self._run(
            "RATE",
            [self.window_key(api_key_id, window_start)],
            [rpm, tpm, tokens, "1" if enforce else "0", _ms(window_start + WINDOW_LIFETIME)],
        )
        return bool(allowed)

    async def _write(self, batch: list[Settlement]) -> None:
        keys: list[str] = []
        args: list[object] = []
        for s in batch:
            period = s.period_start or EPOCH
            window = s.window_start or EPOCH
            keys += self.period_keys(s.api_key_id, period)
            keys.append(self.window_key(s.api_key_id, window))
            args += [
                str(s.lease) if s.lease is not None else "",
                "1" if s.period_start is not None else "0",
                s.charge,
                self.counter_expiry(period),
                s.window_tokens if s.window_start is not None else 0,
                _ms(window + WINDOW_LIFETIME),
            ]
        await self._run("SETTLE", keys, args)

    def _forget(self, lease: uuid.UUID) -> None:
        self._live.pop(lease, None)

    async def _renew_forever(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            live = list(self._live.items())
            for i in range(0, len(live), _RENEW_BATCH):
                chunk = live[i : i + _RENEW_BATCH]
                try:
                    await self._run(
                        "RENEW",
                        [expiry for _, expiry in chunk],
                        [int(self.lease_seconds * 1000)] + [str(lease) for lease, _ in chunk],
                    )
                except StoreUnavailable as exc:
                    log.warning("budget lease renewal failed (%s)", exc)
                    break

    async def _disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.wait_for(client.aclose(), 5.0)

    async def used(self, pairs: list[tuple[uuid.UUID, datetime]]) -> list[int]:
        """``used`` of each ``(key, period start)`` counter, in one round trip."""
        client = self._connect()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for key_id, start in pairs:
                    pipe.hget(self.period_keys(key_id, start)[0], "used")
                values = await pipe.execute()
        except self._errors as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        return [int(v or 0) for v in values]

    async def raise_used(self, api_key_id: uuid.UUID, period_start: datetime, counted: int) -> int:
        """Raise the counter's ``used`` to *counted* (never lower it); returns it."""
        counter = self.period_keys(api_key_id, period_start)[0]
        used = await self._run(
            "RAISE_USED", [counter], [counted, self.counter_expiry(period_start)]
        )
        return int(used)

"""The two budget stores side by side, through their public methods: the same
reservation, extension, rate and settlement semantics, and a lease that expired
and was reclaimed is released exactly once. (The proxy's behaviour on top of
them is in test_budgets.py and test_processes.py.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aigw.budgets.redis_store import RedisBudgetStore
from aigw.budgets.store import BudgetStore, Settlement
from aigw.db.engine import libpq_url
from tests.budgets.conftest import REDIS_URL, StoreView

PERIOD = datetime(2026, 12, 1, tzinfo=UTC)


def open_store(store: StoreView, lease_seconds: float = 30.0) -> Any:
    if store.kind == "redis":
        return RedisBudgetStore(REDIS_URL, prefix=store.prefix, lease_seconds=lease_seconds)
    return BudgetStore(libpq_url(store.db), lease_seconds=lease_seconds)


async def test_reserve_extend_minimum_free_and_settle(store: StoreView) -> None:
    backend = open_store(store)
    backend.start()
    key, a, b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        assert await backend.reserve(key, PERIOD, 100, a, 60, 11) == (60, 100)
        assert await backend.reserve(key, PERIOD, 100, a, 10, 1) == (10, 40)  # extends a
        assert await backend.reserve(key, PERIOD, 100, b, 50, 31) == (0, 30)  # under the minimum
        assert await backend.reserve(key, PERIOD, 100, b, 50, 30) == (30, 30)  # capped by free
        assert await backend.free(key, PERIOD, 100) == 0
        backend.settle(Settlement(key, a, PERIOD, 25, None, 0))  # 70 held, 25 used
        backend.settle(Settlement(key, b, PERIOD, 30, None, 0))
        await backend.flush(5.0)
        assert await backend.free(key, PERIOD, 100) == 45
        [counter] = await store.counters(str(key))
        assert (counter["period_start"], counter["used"], counter["reserved"]) == (PERIOD, 55, 0)
        assert await store.leases(str(key)) == 0
        # Another period of the same key is another counter.
        other = PERIOD + timedelta(days=1)
        assert await backend.free(key, other, 100) == 100
    finally:
        await backend.aclose(5.0)


async def test_an_expired_lease_is_reclaimed_and_its_settlement_releases_nothing_twice(
    store: StoreView,
) -> None:
    # No start(): no heartbeat renews the lease, as if its process had stopped.
    backend = open_store(store, lease_seconds=1.0)
    key, stale, fresh = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        assert await backend.reserve(key, PERIOD, 100, stale, 80, 1) == (80, 100)
        assert await backend.free(key, PERIOD, 100) == 20
        await asyncio.sleep(1.3)
        # The next reservation gives the stale lease's 80 back.
        assert await backend.reserve(key, PERIOD, 100, fresh, 50, 1) == (50, 100)
        # Its request finishes after all: charged once, and its 80 are not taken
        # off the reservations a second time (that would free the fresh lease's 50).
        backend.start()
        backend.settle(Settlement(key, stale, PERIOD, 30, None, 0))
        await backend.flush(5.0)
        [counter] = await store.counters(str(key))
        assert (counter["used"], counter["reserved"]) == (30, 50)
        assert await backend.free(key, PERIOD, 100) == 20
    finally:
        await backend.aclose(5.0)


async def test_a_renewed_lease_is_not_reclaimed(store: StoreView) -> None:
    backend = open_store(store, lease_seconds=1.0)
    backend.start()  # renews every third of a second
    key, held, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        assert await backend.reserve(key, PERIOD, 100, held, 80, 1) == (80, 100)
        await asyncio.sleep(2.0)
        assert await backend.reserve(key, PERIOD, 100, other, 50, 1) == (20, 20)
    finally:
        await backend.aclose(5.0)


async def test_rate_windows(store: StoreView) -> None:
    backend = open_store(store)
    backend.start()
    key = uuid.uuid4()
    # Windows expire two minutes after they start (Redis): use minutes ahead.
    minute = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=5)
    try:
        assert [await backend.take_rate(key, minute, 2, 0, 5, enforce=True) for _ in range(3)] == [
            True,
            True,
            False,
        ]
        # Not enforced: counted and reported over.
        assert await backend.take_rate(key, minute, 2, 0, 5, enforce=False) is False
        nxt = minute + timedelta(minutes=1)
        assert await backend.take_rate(key, nxt, 0, 10, 6, enforce=True) is True
        assert await backend.take_rate(key, nxt, 0, 10, 5, enforce=True) is False
        assert await backend.take_rate(key, nxt, 0, 10, 4, enforce=True) is True
        # Output tokens settled into the window count against tpm.
        backend.settle(Settlement(key, None, None, 0, nxt + timedelta(minutes=1), 9))
        await backend.flush(5.0)
        assert (
            await backend.take_rate(key, nxt + timedelta(minutes=1), 0, 10, 2, enforce=True)
            is False
        )
    finally:
        await backend.aclose(5.0)


async def test_redis_keys_expire_after_their_period_and_leases_leave_no_keys(
    store: StoreView,
) -> None:
    if store.kind != "redis":
        return
    backend = open_store(store)
    backend.start()
    key, lease = uuid.uuid4(), uuid.uuid4()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    try:
        await backend.reserve(key, today, 100, lease, 10, 1)
        await backend.take_rate(key, minute, 5, 0, 3, enforce=True)
        await backend.reserve(key, epoch, 100, uuid.uuid4(), 10, 1)  # a `total` budget
        now_ms = datetime.now(UTC).timestamp() * 1000
        counter, leases, expiry = backend.period_keys(key, today)
        for name in (counter, leases, expiry):
            left = store.ttl_ms(name)
            # 33 days after the period starts: after any period (≤ 31 days) ended.
            expected = (today + timedelta(days=33)).timestamp() * 1000 - now_ms
            assert abs(left - expected) < 60_000, (name, left, expected)
        window_left = store.ttl_ms(backend.window_key(key, minute))
        assert 0 < window_left <= 120_000
        assert store.ttl_ms(backend.period_keys(key, epoch)[0]) == -1  # never expires
        backend.settle(Settlement(key, lease, today, 4, None, 0))
        await backend.flush(5.0)
        names = store.all_keys()
        assert leases not in names and expiry not in names  # emptied: gone
        assert counter in names
    finally:
        await backend.aclose(5.0)

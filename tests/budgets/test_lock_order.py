"""The budget store's lock order (migration 0008, :mod:`aigw.budgets.store`):
renewal never waits for a lease another transaction holds, and a settlement
racing a reclaim in the interleaving that deadlocked under 0005's functions
completes, with ``used`` and ``reserved`` exact.

The interleavings are built step by step on separate connections: a third
connection holds a row lock as a gate, and each step waits until PostgreSQL
shows the previous one blocked on a lock (``pg_stat_activity``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from aigw.budgets.store import BudgetStore

PERIOD = datetime(2026, 12, 1, tzinfo=UTC)
WINDOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def conns(db: str) -> AsyncIterator[list[asyncpg.Connection]]:
    opened = [await asyncpg.connect(db) for _ in range(4)]
    try:
        yield opened
    finally:
        for conn in opened:
            await conn.close()


async def blocked_on_a_lock(watcher: asyncpg.Connection, conn: asyncpg.Connection) -> None:
    """Until *conn*'s statement waits for a lock (30 s at most)."""
    pid = conn.get_server_pid()
    deadline = time.monotonic() + 30
    while not await watcher.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
    ):
        assert time.monotonic() < deadline, "the statement never reached its lock"
        await asyncio.sleep(0.02)


async def lease_rows(conn: asyncpg.Connection, key: uuid.UUID) -> dict[uuid.UUID, tuple]:
    rows = await conn.fetch(
        "SELECT id, tokens, expires_at FROM budget_leases WHERE api_key_id = $1", key
    )
    return {row["id"]: (row["tokens"], row["expires_at"]) for row in rows}


async def counter(conn: asyncpg.Connection, key: uuid.UUID) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT used, reserved FROM budget_counters WHERE api_key_id = $1 AND period_start = $2",
        key,
        PERIOD,
    )
    return int(row["used"]), int(row["reserved"])


async def test_renewal_does_not_wait_for_a_lease_another_transaction_holds(
    db: str, conns: list[asyncpg.Connection]
) -> None:
    holder, watcher = conns[0], conns[1]
    store = BudgetStore(db, lease_seconds=30.0, timeout=3.0)
    key = uuid.uuid4()
    mine = sorted(uuid.uuid4() for _ in range(4))
    try:
        for lease in mine:
            granted, _ = await store.reserve(key, PERIOD, 1000, lease, 10, 1)
            assert granted == 10
        before = await lease_rows(watcher, key)
        busy = mine[1]  # e.g. being settled or reclaimed by another connection
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM budget_leases WHERE id = $1 FOR UPDATE", busy)
            await asyncio.sleep(0.01)  # clock_timestamp() moves on
            # Under 0005's statement this waited for the holder until the store's
            # timeout and renewed nothing (StoreUnavailable).
            renewed = await store.renew()
        after = await lease_rows(watcher, key)
    finally:
        await store.aclose(1.0)
    assert renewed == len(mine) - 1
    assert after[busy] == before[busy]  # skipped: renewed next round
    for lease in mine:
        if lease != busy:
            assert after[lease][1] > before[lease][1], lease


async def test_a_settlement_racing_a_reclaim_completes_and_stays_exact(
    db: str, conns: list[asyncpg.Connection]
) -> None:
    gate, settler, reserver, watcher = conns
    key = uuid.uuid4()
    settled, expired, kept, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # The key's counter: 100 used, three leases reserved (10 + 20 + 30); the 20 one
    # expired (its process stopped renewing it, e.g. its settlement was delayed).
    await watcher.execute(
        "INSERT INTO budget_counters (api_key_id, period_start, used, reserved) "
        "VALUES ($1, $2, 100, 60)",
        key,
        PERIOD,
    )
    for lease, tokens, ttl in ((settled, 10, 60), (expired, 20, -60), (kept, 30, 60)):
        await watcher.execute(
            "INSERT INTO budget_leases (id, api_key_id, period_start, tokens, expires_at) "
            "VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5))",
            lease,
            key,
            PERIOD,
            tokens,
            float(ttl),
        )
    await watcher.execute(
        "INSERT INTO rate_windows (api_key_id, window_start, tokens) VALUES ($1, $2, 1)",
        key,
        WINDOW,
    )

    # The gate: another transaction holds the rate window the settlement charges.
    gate_tx = gate.transaction()
    await gate_tx.start()
    await gate.execute(
        "SELECT 1 FROM rate_windows WHERE api_key_id = $1 AND window_start = $2 FOR UPDATE",
        key,
        WINDOW,
    )
    # One batch settles two leases of the key: 15 and 25 tokens charged, 5 output
    # tokens to the rate window. Under 0005 it stopped at the gate holding the
    # counter (after releasing the first lease), before the second lease.
    settle = asyncio.create_task(
        settler.execute(
            "SELECT aigw_budget_settle($1::uuid[], $2::uuid[], $3::timestamptz[], "
            "$4::int8[], $5::timestamptz[], $6::int8[])",
            [settled, expired],
            [key, key],
            [PERIOD, PERIOD],
            [15, 25],
            [WINDOW, None],
            [5, 0],
        )
    )
    await blocked_on_a_lock(watcher, settler)
    # An extension for the key reclaims the expired lease (under 0005: deleting it
    # first, then waiting for the counter the settlement holds).
    reserve = asyncio.create_task(
        reserver.fetchrow(
            "SELECT granted, free FROM aigw_budget_reserve($1, $2, 1000, $3, 40, 1, 60)",
            key,
            PERIOD,
            new,
        )
    )
    await blocked_on_a_lock(watcher, reserver)
    await gate_tx.rollback()
    # Under 0005 the settlement now waited for the expired lease the reservation
    # held: "deadlock detected" (asyncpg.exceptions.DeadlockDetectedError).
    results = await asyncio.gather(settle, reserve, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results

    # The settlement released both leases (10 + 20 out of reserved) and charged 40;
    # the reclaim found the expired lease gone and returned nothing twice.
    granted, free = results[1]["granted"], results[1]["free"]
    assert (granted, free) == (40, 1000 - 140 - 30)
    assert await counter(watcher, key) == (140, 30 + 40)
    assert set(await lease_rows(watcher, key)) == {kept, new}
    assert (
        await watcher.fetchval(
            "SELECT tokens FROM rate_windows WHERE api_key_id = $1 AND window_start = $2",
            key,
            WINDOW,
        )
        == 1 + 5
    )

    # The other order: a reclaim first, then the settlement of the lease it took.
    await watcher.execute(
        "UPDATE budget_leases SET expires_at = clock_timestamp() - interval '1 minute' "
        "WHERE id = $1",
        kept,
    )
    assert (
        await reserver.fetchval(
            "SELECT free FROM aigw_budget_reserve($1, $2, 1000, NULL, 0, 0, 0)", key, PERIOD
        )
        == 1000 - 140 - 40
    )
    assert await counter(watcher, key) == (140, 40)
    await settler.execute(
        "SELECT aigw_budget_settle($1::uuid[], $2::uuid[], $3::timestamptz[], "
        "$4::int8[], $5::timestamptz[], $6::int8[])",
        [kept],
        [key],
        [PERIOD],
        [7],
        [None],
        [0],
    )
    assert await counter(watcher, key) == (147, 40)  # its 30 left reserved once, not twice


async def _deadlocks(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
    )


@pytest.mark.slow
async def test_stress_many_stores_one_key_no_deadlock(
    db: str, conns: list[asyncpg.Connection]
) -> None:
    """Five rounds of 200 requests at once on one key from three stores (reserve,
    extend slice by slice, settle) with 1 s leases renewed every third of a second,
    while six more stores "stall" one after another: each reserves 30 leases, lets
    them expire (the others' reservations reclaim them), then wakes up and settles
    them in one batch while the traffic goes on. No deadlock (PostgreSQL's own
    count), no call fails, and the counter ends exact: used = every charge, nothing
    reserved, no lease left."""
    from aigw.budgets.store import Settlement, StoreUnavailable

    watcher = conns[0]
    key = uuid.uuid4()
    budget = 10_000_000
    stores = [BudgetStore(db, lease_seconds=1.0, timeout=10.0, max_connections=5) for _ in range(3)]
    stalled = [
        BudgetStore(db, lease_seconds=1.0, timeout=10.0, max_connections=5) for _ in range(6)
    ]
    for store in stores:
        store.start()
    failures: list[str] = []
    charges: list[int] = []

    async def request(store: BudgetStore, index: int) -> None:
        lease = uuid.uuid4()
        try:
            granted, _ = await store.reserve(key, PERIOD, budget, lease, 20, 11)
            assert granted == 20
            for _ in range(index % 4):  # extensions, one slice each
                await asyncio.sleep(0.01 * (index % 7))
                extra, _ = await store.reserve(key, PERIOD, budget, lease, 8, 1)
                granted += extra
        except StoreUnavailable as exc:
            failures.append(str(exc))
            return
        charge = granted - index % 5
        charges.append(charge)
        store.settle(Settlement(key, lease, PERIOD, charge, WINDOW, index % 3))

    async def traffic() -> None:
        for _ in range(5):
            await asyncio.gather(*(request(stores[i % 3], i) for i in range(200)))

    async def stall(store: BudgetStore, delay: float) -> None:
        await asyncio.sleep(delay)
        await asyncio.gather(*(request(store, i) for i in range(30)))
        await asyncio.sleep(1.2)  # no renewal: the leases expire
        store.start()  # its settle task writes the queued batch now

    all_stores = (*stores, *stalled)
    before = await _deadlocks(watcher)
    try:
        await asyncio.gather(traffic(), *(stall(store, 0.4 * n) for n, store in enumerate(stalled)))
        for store in all_stores:
            await store.flush(30.0)
    finally:
        for store in all_stores:
            await store.aclose(5.0)
    deadlocks = await _deadlocks(watcher) - before
    used, reserved = await counter(watcher, key)
    left = await lease_rows(watcher, key)
    print(
        f"\nstress: {len(charges)} requests settled, {len(failures)} store failures "
        f"{sorted(set(failures))}, {deadlocks} deadlocks; used={used} (charged "
        f"{sum(charges)}), reserved={reserved}, leases left={len(left)}"
    )
    assert deadlocks == 0 and failures == []
    assert (used, reserved, len(left)) == (sum(charges), 0, 0)

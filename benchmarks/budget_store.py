"""The budget store alone: PostgreSQL's ``aigw_budget_*`` functions against the same
reserve/settle logic as Redis Lua scripts, from one asyncio process, on one key
(the hot-row case: every request of a key locks its counter).

Per operation (one reservation, settlements batched by 50 as the gateway's
settle task does): wall time, the client's CPU and the server's (PostgreSQL's
backends of the database, or redis-server). The Lua here is the measuring stick
the Redis store (aigw.budgets.redis_scripts) was built against; redis-py is an
aigw dependency now, and is still installed into ``benchmarks/.work/pylib`` when a
foreign ``AIGW_BENCH_CMD`` setup lacks it.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

BUDGET = 10**12
CONCURRENCY = 10

# Reserve: give back expired leases, then grant min(want, free) if >= minimum.
_REDIS_RESERVE = """
local now = tonumber(ARGV[1])
for _, lease in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  local tokens = tonumber(redis.call('HGET', KEYS[2], lease) or '0')
  redis.call('HDEL', KEYS[2], lease)
  redis.call('ZREM', KEYS[3], lease)
  redis.call('HINCRBY', KEYS[1], 'reserved', -tokens)
end
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local free = math.max(tonumber(ARGV[2]) - used - reserved, 0)
local grant = math.min(tonumber(ARGV[4]), free)
if grant < tonumber(ARGV[5]) or grant <= 0 then return {0, free} end
redis.call('HINCRBY', KEYS[1], 'reserved', grant)
redis.call('HINCRBY', KEYS[2], ARGV[3], grant)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[3])
return {grant, free}
"""
# Settle a batch: ARGV = lease, charge, lease, charge, ...
_REDIS_SETTLE = """
for i = 1, #ARGV, 2 do
  local tokens = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
  redis.call('HINCRBY', KEYS[1], 'reserved', -tokens)
  redis.call('HINCRBY', KEYS[1], 'used', tonumber(ARGV[i + 1]))
end
return 0
"""


def _redis_module() -> Any:
    """redis-py, installed into benchmarks/.work/pylib when missing (never an aigw
    dependency); None when it cannot be had."""
    import subprocess
    import sys

    from benchmarks.targets import WORK

    target = WORK / "pylib"
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    try:
        import redis.asyncio
    except ImportError:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "redis"],
            check=False,
        )
        if done.returncode != 0:
            return None
        importlib.invalidate_caches()  # the folder was listed before pip filled it
        import redis.asyncio
    return redis.asyncio


def _server_cpu(pids: list[int]) -> float:
    from benchmarks.procs import cpu_reading

    reading = cpu_reading(pids)
    return reading.runtime or reading.ticks


def _pg_backends(database: str) -> list[int]:
    import os

    needle = f" {database} ".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    title = f.read(256)
            except OSError:
                continue
            if title.startswith(b"postgres:") and needle in title:
                pids.append(int(entry.name))
    return pids


def _redis_pids() -> list[int]:
    import os

    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/comm") as f:
                    if f.read().strip() == "redis-server":
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def _drive_store(reserve: Any, settle: Any, n: int, c: int) -> tuple[float, float]:
    """*c* tasks reserving *n* times in all (one key: the hot-row case), settled in
    batches of 50 as the gateway's settle task does; returns (wall, client CPU)."""
    import asyncio
    import uuid

    pending: list[tuple[str, int]] = []
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            lease = str(uuid.uuid4())
            granted = await reserve(lease)
            pending.append((lease, granted))
            if len(pending) >= 50:
                batch = pending[:]
                pending.clear()
                await settle(batch)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(c)))
    if pending:
        await settle(pending)
    return time.perf_counter() - wall0, time.process_time() - cpu0


async def compare(database_url: str, redis_url: str, n: int, c: int = CONCURRENCY) -> dict:
    """Reserve + settle on one key, through PostgreSQL's ``aigw_budget_*`` functions and
    through the same logic as Redis Lua scripts; per operation: wall, client CPU,
    server CPU."""
    import uuid
    from datetime import UTC, datetime

    import asyncpg

    out: dict[str, Any] = {"operations": n, "concurrency": c}
    key, period = uuid.uuid4(), datetime(2026, 1, 1, tzinfo=UTC)
    database = database_url.rsplit("/", 1)[1].split("?")[0]
    pool = await asyncpg.create_pool(database_url, min_size=c, max_size=c)
    try:

        async def pg_reserve(lease: str) -> int:
            row = await pool.fetchrow(
                "SELECT granted FROM aigw_budget_reserve($1, $2, $3, $4, $5, $6, $7)",
                key, period, BUDGET, uuid.UUID(lease), 1000, 1, 30.0,
            )  # fmt: skip
            return int(row["granted"])

        async def pg_settle(batch: list[tuple[str, int]]) -> None:
            await pool.execute(
                "SELECT aigw_budget_settle($1::uuid[], $2::uuid[], $3::timestamptz[], "
                "$4::int8[], $5::timestamptz[], $6::int8[])",
                [uuid.UUID(lease) for lease, _ in batch], [key] * len(batch),
                [period] * len(batch), [g // 2 for _, g in batch],
                [None] * len(batch), [0] * len(batch),
            )  # fmt: skip

        await _drive_store(pg_reserve, pg_settle, 200, c)  # warm
        pids = _pg_backends(database)
        server0 = _server_cpu(pids)
        wall, client = await _drive_store(pg_reserve, pg_settle, n, c)
        out["postgresql"] = _per_op(n, wall, client, _server_cpu(pids) - server0)
    finally:
        await pool.close()
    module = _redis_module()
    if module is None:
        out["redis"] = {"skipped": "redis-py could not be installed"}
        return out
    client_ = module.from_url(redis_url, max_connections=c)
    try:
        await client_.ping()
    except Exception as exc:
        out["redis"] = {"skipped": f"no Redis at {redis_url}: {type(exc).__name__}"}
        return out
    try:
        base = f"aigw-bench:{key}"
        keys = [f"{base}:counter", f"{base}:leases", f"{base}:expiry"]
        reserve_script = client_.register_script(_REDIS_RESERVE)
        settle_script = client_.register_script(_REDIS_SETTLE)

        async def redis_reserve(lease: str) -> int:
            granted, _ = await reserve_script(
                keys=keys, args=[time.time(), BUDGET, lease, 1000, 1, 30]
            )
            return int(granted)

        async def redis_settle(batch: list[tuple[str, int]]) -> None:
            await settle_script(keys=keys, args=[x for lease, g in batch for x in (lease, g // 2)])

        await _drive_store(redis_reserve, redis_settle, 200, c)  # warm
        pids = _redis_pids()
        server0 = _server_cpu(pids)
        wall, client = await _drive_store(redis_reserve, redis_settle, n, c)
        out["redis"] = _per_op(n, wall, client, _server_cpu(pids) - server0)
        out["redis"]["client"] = f"redis-py {module.__name__.split('.')[0]}"
        await client_.delete(*keys)
    finally:
        await client_.aclose()
    return out


def _per_op(n: int, wall: float, client: float, server: float) -> dict:
    return {
        "ops_per_s": n / wall,
        "client_cpu_us": client * 1e6 / n,
        "server_cpu_us": server * 1e6 / n,
    }

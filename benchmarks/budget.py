"""What a budget or a rate limit costs a key on the hot path (issue 14).

One aigw process, four keys that differ only in their budget fields (same model,
same input/output limits, ``reject``): ``plain`` (none), ``budget`` (a budget it
never reaches), ``rates`` (rpm/tpm it never reaches) and ``budget+rates``. Each is
driven closed-loop with the same short prompt, whole and streamed, in interleaved
rounds (the key order rotates every round), and each cell reads

- aigw's CPU per request and PostgreSQL's (the backends of aigw's database, where
  the budget store's reservations, settlements and rate windows run),
- req/s and p50 latency,

with the CPU read once the process is idle again, so settlements written after
the last response are charged to the cell that caused them. The ratios to
``plain`` in the same run are the figures; docs/budgets.md turns them into the
PostgreSQL-or-Redis decision.

Then the same keys on a second aigw process on the same database with
``AIGW_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``, its own key prefix,
deleted afterwards): the Redis store's cost, its side CPU being PostgreSQL's
(usage records) plus redis-server's. Skipped, with the reason, when no Redis
answers.

``python -m benchmarks.run --quick --skip throughput,latency,ttfb,chunk,memory,search,bigprompt``
runs this phase alone (with the warm-up).
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import time
from typing import Any

from benchmarks import budget_store
from benchmarks.procs import CpuReading, cpu_reading, free_port, wait_http
from benchmarks.targets import ROOT, Aigw, _http_json
from benchmarks.workload import SHORT, body

BUDGET = 10**12  # never reached: every request pays the whole path, none is refused
KEYS: dict[str, dict[str, Any]] = {
    "plain": {},
    "budget": {"budget_tokens": BUDGET, "budget_period": "month"},
    "rates": {"rpm_limit": 10_000_000, "tpm_limit": BUDGET},
    "budget+rates": {
        "budget_tokens": BUDGET,
        "budget_period": "month",
        "rpm_limit": 10_000_000,
        "tpm_limit": BUDGET,
    },
}
CONCURRENCY = 10
MODES = ("json", "stream")


def phase(bench: Any) -> None:
    """The run's ``budget`` phase: aigw only (the other targets have no budgets)."""
    for target in bench.live():
        if isinstance(target, Aigw):
            bench.guard(target, "budget", _measure, bench, target)


def _create_keys(target: Aigw) -> dict[str, dict[str, Any]]:
    keys = {}
    for name, fields in KEYS.items():
        status, created = _http_json(
            "POST",
            f"http://127.0.0.1:{target.port}/apikeys",
            {
                "alias": f"bench-budget-{name.replace('+', '-')}-{secrets.token_hex(3)}",
                "provider": target.provider_name,
                "model": "gpt-4o-mini",
                "status": "enabled",
                "key_code": "sk-bench-" + secrets.token_urlsafe(12),
                "input_limit": target.INPUT_LIMIT,
                "output_limit": target.OUTPUT_LIMIT,
                "usage_limit": "reject",
                **fields,
            },
            target.admin_token,
        )
        if status != 201:
            raise RuntimeError(f"POST /apikeys ({name}) answered {status}: {created}")
        keys[name] = created
    return keys


def _call(target: Aigw, token: str, stream: bool) -> Any:
    saved = target.token
    target.token = token
    try:
        return target.call(body(SHORT, stream))
    finally:
        target.token = saved


def _cell(bench: Any, target: Aigw, token: str, mode: str, duration: float) -> dict:
    stream = mode == "stream"
    call = _call(target, token, stream)
    bench.settle(target)
    cpu0, db0 = target.cpu(), target.side_cpu()
    out = bench.drive(call, CONCURRENCY, duration, stream)
    bench.settle(target)  # settlements after the last response belong to this cell
    cpu1, db1 = target.cpu(), target.side_cpu()
    n = max(1, out["requests"])
    seconds = out["duration_us"] / 1e6
    return {
        "requests": out["requests"],
        "errors": out["errors"],
        "rps": out["requests"] / seconds if seconds else 0.0,
        "cpu_ms": (cpu1 - cpu0) * 1000 / n,
        "db_cpu_ms": (db1 - db0) * 1000 / n if db0 is not None and db1 is not None else None,
        "p50_ms": out["p50_us"] / 1000,
    }


def _median(rows: list[dict], field: str) -> float | None:
    values = [r[field] for r in rows if r.get(field) is not None]
    return statistics.median(values) if values else None


def _measure(bench: Any, target: Aigw) -> None:
    out = _keys_cost(bench, target)
    out["store"] = "PostgreSQL (the gateway's own database)"
    bench.results[target.name].budget = out  # kept whatever the Redis runs do
    from benchmarks.run import log  # run imports this module

    redis_url = os.environ.get("AIGW_REDIS_URL", "redis://127.0.0.1:6379/0")
    if target.database_url:
        variant = RedisAigw(target, redis_url)
        missing = variant.missing()
        if missing:
            out["redis"] = {"skipped": missing}
        else:
            try:
                variant.launch(bench.env)
                variant.ready(bench.env)
                log(f"budget, the same keys with AIGW_REDIS_URL ({variant.name})")
                redis_out = _keys_cost(bench, variant)
                redis_out["store"] = f"Redis ({redis_url}), usage records in PostgreSQL"
                out["redis"] = redis_out
            finally:
                if variant.server is not None:
                    variant.server.stop()
                variant.cleanup()
        n = 3000 if bench.quick else 20000
        log(f"budget store alone: {n} reservations on one key, c={CONCURRENCY}")
        out["stores"] = bench.aio(budget_store.compare(target.database_url, redis_url, n))
    for line in summary(out):
        log("  " + line)


def _keys_cost(bench: Any, target: Aigw) -> dict[str, Any]:
    """The four keys on *target*, interleaved: per key and mode, the medians."""
    plan = bench.plan
    duration = max(2.0, plan.duration)
    rounds = max(2, plan.reps)
    keys = _create_keys(target)
    time.sleep(0.5)  # the key cache hears of them (LISTEN/NOTIFY)
    names = list(KEYS)
    from benchmarks.run import log  # run imports this module

    log(
        f"budget: {len(names)} keys x {len(MODES)} modes x {rounds} rounds x {duration:g}s, "
        f"c={CONCURRENCY}"
    )
    cells: dict[str, dict[str, list[dict]]] = {n: {m: [] for m in MODES} for n in names}
    for r in range(rounds):
        for mode in MODES:
            for name in names[r % len(names) :] + names[: r % len(names)]:
                row = _cell(bench, target, keys[name]["token"], mode, duration)
                cells[name][mode].append(row)
                log(
                    f"  {name:12} {mode:6} {row['rps']:7.0f}/s  aigw {row['cpu_ms']:6.3f} ms/req  "
                    f"store {row['db_cpu_ms'] or 0:6.3f} ms/req  p50 {row['p50_ms']:6.2f} ms  "
                    f"err {row['errors']}"
                )
    out: dict[str, Any] = {"concurrency": CONCURRENCY, "duration_s": duration, "rounds": rounds}
    out["keys"] = {}
    for name in names:
        out["keys"][name] = {
            mode: {
                field: _median(rows, field) for field in ("rps", "cpu_ms", "db_cpu_ms", "p50_ms")
            }
            | {"errors": sum(r["errors"] for r in rows), "cells": rows}
            for mode, rows in cells[name].items()
        }
    out["ratios"] = _ratios(out["keys"])
    out["budget_used"] = _used(target, keys["budget"]["id"])
    return out


class RedisAigw(Aigw):
    """A second aigw on the same database whose budget counters live in Redis
    (``AIGW_REDIS_URL``, its own key prefix): the same keys measured against it.
    Its side CPU is PostgreSQL's backends of the database (usage records) plus
    redis-server's."""

    def __init__(self, base: Aigw, redis_url: str) -> None:
        super().__init__(name=f"{base.name}-redis")
        self.base = base
        self.redis_url = redis_url
        self.database = base.database  # shared, and left for the base to drop
        self.database_url = base.database_url
        self.prefix = f"aigw-bench-{secrets.token_hex(4)}:"

    def missing(self) -> str | None:
        """Why the variant cannot run (no redis-py, no Redis answering), or None."""
        import redis

        try:
            redis.Redis.from_url(self.redis_url, socket_timeout=1.0).ping()
        except (redis.RedisError, OSError) as exc:
            return f"no Redis at {self.redis_url}: {type(exc).__name__}"
        return None

    def launch(self, env: Any) -> None:
        self.port = free_port()
        self.admin_token = self.base.admin_token
        data_dir = env.workdir / f"{self.name}-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        # The same database: the same key ring and pepper (generated into the base's
        # data folder at its start) or the stored key codes cannot be opened.
        base_dir = env.workdir / f"{self.base.name}-data"
        for secret in ("encryption_keys", "token_pepper"):
            shutil.copy2(base_dir / secret, data_dir / secret)
        server_env = {
            "AIGW_ADMIN_TOKEN": self.admin_token,
            "AIGW_DATA_DIR": str(data_dir),
            "AIGW_LOG_LEVEL": "WARNING",
            "AIGW_DATABASE_URL": str(self.database_url),
            "AIGW_REDIS_URL": self.redis_url,
            "AIGW_REDIS_PREFIX": self.prefix,
        }
        argv = [*self.command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.server = env.procs.start(
            self.name, argv, cpu=env.gateway_cpu, env=server_env, cwd=ROOT
        )

    def ready(self, env: Any) -> None:
        assert self.server is not None
        wait_http(self.server, f"http://127.0.0.1:{self.port}/healthz", 120)
        self.provider_name = self.base.provider_name  # same database: already there

    def side_cpu(self) -> CpuReading | None:
        pg = super().side_cpu()
        server = cpu_reading(budget_store._redis_pids())
        if pg is None:
            return server
        return CpuReading(pg.ticks + server.ticks, pg.runtime + server.runtime)

    def cleanup(self) -> None:
        import redis

        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5.0)
            names = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if names:
                client.delete(*names)
        except (redis.RedisError, OSError) as exc:
            print(f"  {self.name}: could not delete its Redis keys: {exc}")
        self.database = None  # the base drops it


def _used(target: Aigw, key_id: str) -> int | None:
    """The budget key's counter afterwards: proof its requests went through the store."""
    status, read = _http_json(
        "GET", f"http://127.0.0.1:{target.port}/apikeys/{key_id}", None, target.admin_token
    )
    return read.get("budget_used") if status == 200 else None


def _ratios(keys: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    base = keys["plain"]
    out: dict[str, dict[str, dict]] = {}
    for name, modes in keys.items():
        if name == "plain":
            continue
        out[name] = {}
        for mode, row in modes.items():
            b = base[mode]
            total = (row["cpu_ms"] or 0) + (row["db_cpu_ms"] or 0)
            base_total = (b["cpu_ms"] or 0) + (b["db_cpu_ms"] or 0)
            out[name][mode] = {
                "cpu": row["cpu_ms"] / b["cpu_ms"] if b["cpu_ms"] else None,
                "cpu_with_db": total / base_total if base_total else None,
                "rps": row["rps"] / b["rps"] if b["rps"] else None,
                "added_cpu_ms": row["cpu_ms"] - b["cpu_ms"],
                "added_db_cpu_ms": (row["db_cpu_ms"] or 0) - (b["db_cpu_ms"] or 0),
            }
    return out


def summary(out: dict) -> list[str]:
    """Lines for the console and the run's summary."""
    if not out.get("ratios"):
        return []
    lines = []
    for store, row in (out.get("stores") or {}).items():
        if isinstance(row, dict) and "ops_per_s" in row:
            lines.append(
                f"store alone, {store}: {row['ops_per_s']:.0f} reservations/s on one key, "
                f"client CPU {row['client_cpu_us']:.0f} us, server CPU {row['server_cpu_us']:.0f} us"
            )
        elif isinstance(row, dict):
            lines.append(f"store alone, {store}: {row.get('skipped')}")
    redis = out.get("redis") or {}
    runs = [("PostgreSQL", out)]
    if redis.get("ratios"):
        runs.append(("Redis", redis))
    elif redis.get("skipped"):
        lines.append(f"Redis store: {redis['skipped']}")
    for label, run in runs:
        side = "PostgreSQL" if label == "PostgreSQL" else "PostgreSQL + Redis"
        for name, modes in run["ratios"].items():
            for mode, r in modes.items():
                lines.append(
                    f"[{label} store] {name}/plain {mode}: aigw CPU {r['cpu']:.2f}x "
                    f"({r['added_cpu_ms']:+.3f} ms/req), with {side} {r['cpu_with_db']:.2f}x "
                    f"({r['added_db_cpu_ms']:+.3f} ms/req in {side}), req/s {r['rps']:.2f}x"
                )
    return lines


def markdown(aigw: dict | None) -> list[str]:
    """The RESULTS.md section."""
    out = (aigw or {}).get("budget") or {}
    if not out.get("keys"):
        return []
    parts = ["## Budgeted keys (issue 14): the hot-path cost", ""]
    parts.append(
        f"Four keys on the same aigw process, c={out['concurrency']}, "
        f"{out['rounds']} interleaved rounds of {out['duration_s']:g} s per cell, short prompt; "
        "first with the budget store in PostgreSQL (the default), then on a second aigw "
        "process on the same database with `AIGW_REDIS_URL` set. CPU per request counted "
        "until the process is idle again (settlements included); the store's column is "
        "PostgreSQL's backends of aigw's database, plus redis-server for the Redis run. "
        "Medians; ratios to `plain` in the same run."
    )
    parts += ["", "| store | key | mode | req/s | aigw CPU ms/req | store CPU ms/req | p50 ms |"]
    parts.append("|---|---|---|---|---|---|---|")
    runs = [("PostgreSQL", out)]
    if (out.get("redis") or {}).get("keys"):
        runs.append(("Redis", out["redis"]))
    for label, run in runs:
        for name, modes in run["keys"].items():
            for mode, row in modes.items():
                parts.append(
                    f"| {label} | {name} | {mode} | {row['rps']:.0f} | {row['cpu_ms']:.3f} | "
                    f"{row['db_cpu_ms'] or 0:.3f} | {row['p50_ms']:.2f} |"
                )
    parts += ["", *(f"- {line}" for line in summary(out)), ""]
    return parts

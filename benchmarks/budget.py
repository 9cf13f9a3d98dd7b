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

``python -m benchmarks.run --quick --skip throughput,latency,ttfb,chunk,memory,search,bigprompt``
runs this phase alone (with the warm-up).
"""

from __future__ import annotations

import os
import secrets
import statistics
import time
from typing import Any

from benchmarks import budget_store
from benchmarks.targets import Aigw, _http_json
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
                    f"PostgreSQL {row['db_cpu_ms'] or 0:6.3f} ms/req  p50 {row['p50_ms']:6.2f} ms  "
                    f"err {row['errors']}"
                )
    out: dict[str, Any] = {"concurrency": CONCURRENCY, "duration_s": duration, "rounds": rounds}
    out["store"] = "PostgreSQL (the gateway's own database)"
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
    bench.results[target.name].budget = out  # kept whatever the store comparison does
    if target.database_url:
        redis_url = os.environ.get("AIGW_REDIS_URL", "redis://127.0.0.1:6379/0")
        n = 3000 if bench.quick else 20000
        log(f"budget store alone: {n} reservations on one key, c={CONCURRENCY}")
        out["stores"] = bench.aio(budget_store.compare(target.database_url, redis_url, n))
    for line in summary(out):
        log("  " + line)


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
    for name, modes in out["ratios"].items():
        for mode, r in modes.items():
            lines.append(
                f"{name}/plain {mode}: aigw CPU {r['cpu']:.2f}x ({r['added_cpu_ms']:+.3f} ms/req), "
                f"with PostgreSQL {r['cpu_with_db']:.2f}x ({r['added_db_cpu_ms']:+.3f} ms/req in "
                f"PostgreSQL), req/s {r['rps']:.2f}x"
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
        f"store: {out['store']}. CPU per request counted until the process is idle again "
        "(settlements included). Medians; ratios to `plain` in the same run."
    )
    parts += ["", "| key | mode | req/s | aigw CPU ms/req | PostgreSQL CPU ms/req | p50 ms |"]
    parts.append("|---|---|---|---|---|---|")
    for name, modes in out["keys"].items():
        for mode, row in modes.items():
            parts.append(
                f"| {name} | {mode} | {row['rps']:.0f} | {row['cpu_ms']:.3f} | "
                f"{row['db_cpu_ms'] or 0:.3f} | {row['p50_ms']:.2f} |"
            )
    parts += ["", *(f"- {line}" for line in summary(out)), ""]
    return parts

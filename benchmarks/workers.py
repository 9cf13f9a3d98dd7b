"""``aigw serve --workers 2`` against ``--workers 1``: does a second worker double capacity?

Two aigw targets (1 and 2 workers, each on its own database, the run's fake
upstream) serve the same non-stream load (wrk, c=64, closed loop) in
interleaved rounds. On a two-core machine the raw req/s cannot double: the
load generator and the fake upstream need about a core themselves (they stay
pinned to the load core; the workers float over both). So capacity comes from
what the gateway spends, which the load side does not change:

- ``cpu_ms``: gateway CPU per request, all its processes together. With N
  workers each kept busy, N cores serve ``N / cpu_ms`` requests a second, so
  the ratio ``2 * cpu_ms(1) / cpu_ms(2)`` is what a second worker adds under
  a closed-loop load (the target: >= 1.8). A lock or a shared resource shows
  as more CPU per request with two workers.
- ``busiest_share``: the largest share of the open client connections one
  worker holds, sampled while the load runs (connections stay with the worker
  that accepted them; 0.5 is an even split of two). Under an open-loop load
  (each connection sending at its own pace), the busiest worker saturates
  first: ``cpu_ms(1) / (cpu_ms(2) * busiest_share)`` is that ratio.

The raw req/s of both, and PostgreSQL's CPU per request, are reported beside.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
from typing import Any

from benchmarks import load
from benchmarks.procs import cpu_reading
from benchmarks.targets import Aigw
from benchmarks.workload import SHORT, body

WORKER_COUNTS = (1, 2)
CONNECTIONS = 64


def _connections(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on *port* held by each of *pids*."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    held = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]  # noqa: SIM115
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                held[inodes[fields[9]]] += 1
    return held


def _cell(bench: Any, target: Aigw) -> dict:
    """One round of load on *target*: req/s, CPU per process, how the load's
    connections spread over the processes (sampled while the load runs)."""
    assert target.server is not None
    call = target.call(body(SHORT, stream=False))
    bench.settle(target)
    pids = target.server.pids()
    samples: list[dict[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append(_connections(pids, target.port))

    sampler = threading.Thread(target=sample, daemon=True)
    before = {p: cpu_reading([p]) for p in pids}
    db0 = target.side_cpu()
    sampler.start()
    try:
        out = bench.drive(call, CONNECTIONS, bench.plan.duration, False)
    finally:
        done.set()
        sampler.join()
    after = {p: cpu_reading([p]) for p in pids}
    db1 = target.side_cpu()
    seconds = out["duration_us"] / 1e6
    used = [after[p] - before[p] for p in pids]
    requests = max(1, out["requests"])
    held = max(samples or [{}], key=lambda s: sum(s.values()))
    return {
        "requests": out["requests"],
        "errors": out["errors"],
        "rps": out["requests"] / seconds,
        "cpu_ms": sum(used) * 1000 / requests,
        "db_cpu_ms": (db1 - db0) * 1000 / requests if db0 is not None and db1 is not None else None,
        "process_cpu_share": sorted((u / seconds for u in used), reverse=True),
        "connections": sorted(held.values(), reverse=True),
        "busiest_share": max(held.values(), default=0) / max(1, sum(held.values())),
    }


async def _warm(calls: list[Any], seconds: float) -> None:
    await asyncio.gather(*(load.closed_loop(c, 8, duration=seconds) for c in calls))


def run(bench: Any) -> dict:
    """Start aigw with 1 and 2 workers, measure both in interleaved rounds, stop them."""
    env = bench.env
    targets: list[Aigw] = []
    rows: dict[int, list[dict]] = {n: [] for n in WORKER_COUNTS}
    try:
        # One after the other: a launch drops the databases nobody is connected
        # to yet (left by killed runs), which a target still starting would be.
        for n in WORKER_COUNTS:
            target = Aigw(workers=n, name=f"aigw-{n}w")
            targets.append(target)
            target.launch(env)
            target.ready(env)
            bench.check(target)
        # Warmed as every target is (run.py: warmup_s, 30 s in a full run), both at once.
        calls = [t.call(body(SHORT, stream=False)) for t in targets]
        bench.aio(_warm(calls, bench.plan.warmup_s))
        for rep in range(max(3, bench.plan.reps)):
            for target in bench.rotate(targets, rep):
                row = _cell(bench, target)
                rows[target.workers].append(row)
                print(
                    f"  {target.workers} worker(s): {row['rps']:8.0f} req/s  "
                    f"cpu {row['cpu_ms']:.3f} ms/req  connections {row['connections']}  "
                    f"process CPU {[round(s, 2) for s in row['process_cpu_share']]}",
                    flush=True,
                )
    finally:
        for target in targets:
            if target.server is not None:
                target.server.stop()
            target.cleanup()
    out: dict = {"connections": CONNECTIONS, "rounds": rows}
    for n in WORKER_COUNTS:
        cells = rows[n]
        out[f"w{n}"] = {
            key: statistics.median(r[key] for r in cells)
            for key in ("rps", "cpu_ms", "busiest_share")
        }
    first, second = out["w1"], out["w2"]
    out["capacity_ratio"] = 2 * first["cpu_ms"] / second["cpu_ms"]
    out["open_loop_ratio"] = first["cpu_ms"] / (second["cpu_ms"] * second["busiest_share"])
    out["raw_ratio"] = second["rps"] / first["rps"]
    print(
        f"  2 workers / 1: capacity {out['capacity_ratio']:.2f}x (CPU/req "
        f"{second['cpu_ms']:.3f} vs {first['cpu_ms']:.3f} ms); open loop "
        f"{out['open_loop_ratio']:.2f}x (busiest worker holds {second['busiest_share']:.0%} "
        f"of the connections); raw req/s {out['raw_ratio']:.2f}x (the load side shares the cores)",
        flush=True,
    )
    return out

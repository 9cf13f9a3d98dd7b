"""Which load generator is accurate enough? ``python -m benchmarks.loadgen_check``

Drives the fake upstream (the fastest thing there is to measure) and the
reference passthrough, each pinned to the gateway core, with wrk, hey and the
harness's asyncio client from the load core, and prints what each one saw and
how busy the load core was. A generator that saturates its own core before
the server does under-reports; the chosen one must not.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import load
from benchmarks.procs import Procs, core_busy, core_times, cpus, free_port, wait_http
from benchmarks.targets import ROOT, WORK
from benchmarks.workload import SHORT, body

DURATION = 3


def _hey(call: load.Call, c: int, cpu: int) -> dict:
    hey = shutil.which("hey")
    if not hey:
        return {}
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(call.body)
    argv = [hey, "-z", f"{DURATION}s", "-c", str(c), "-m", "POST", "-D", f.name]
    for k, v in call.headers:
        if k.lower() == "content-type":
            argv += ["-T", v]
        else:
            argv += ["-H", f"{k}: {v}"]
    done = subprocess.run(
        [*argv, call.url],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        check=False,
    )
    os.unlink(f.name)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    p50 = re.search(r"50%+ in ([\d.]+) secs", done.stdout)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": float(p50.group(1)) * 1000 if p50 else float("nan"),
    }


def _wrk(call: load.Call, c: int, cpu: int, workdir: Path) -> dict:
    wrk = load.ensure_wrk()
    if not wrk:
        return {}
    out = load.run_wrk(wrk, call, connections=c, duration=DURATION, cpu=cpu, workdir=workdir)
    return {"rps": out["requests"] / (out["duration_us"] / 1e6), "p50_ms": out["p50_us"] / 1000}


def _python(call: load.Call, c: int, cpu: int) -> dict:
    os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    batch = runner(load.closed_loop(call, c, duration=DURATION))
    totals = [r.total * 1000 for r in batch.responses]
    return {
        "rps": len(batch.responses) / batch.wall,
        "p50_ms": statistics.median(totals) if totals else float("nan"),
    }


def main() -> int:
    available = cpus()
    if len(available) < 2:
        print("needs two CPUs")
        return 1
    server_cpu, load_cpu = available[0], available[1]
    workdir = WORK / "loadgen-check"
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir, set(available))
    os.sched_setaffinity(0, {load_cpu})
    try:
        up_port = free_port()
        upstream = procs.start(
            "upstream",
            [sys.executable, "-m", "benchmarks.upstream", "--port", str(up_port)],
            cpu=load_cpu,
            cwd=ROOT,
        )
        wait_http(upstream, f"http://127.0.0.1:{up_port}/health", 20)
        direct_port = free_port()
        direct = procs.start(
            "direct",
            [sys.executable, "-m", "benchmarks.upstream", "--port", str(direct_port)],
            cpu=server_cpu,
            cwd=ROOT,
        )
        wait_http(direct, f"http://127.0.0.1:{direct_port}/health", 20)
        ref_port = free_port()
        reference = procs.start(
            "reference",
            [
                sys.executable,
                "-m",
                "benchmarks.reference",
                "--port",
                str(ref_port),
                "--upstream",
                f"http://127.0.0.1:{up_port}/v1",
                "--token",
                "check",
            ],
            cpu=server_cpu,
            cwd=ROOT,
        )
        wait_http(reference, f"http://127.0.0.1:{ref_port}/health", 30)
        headers = (("Content-Type", "application/json"), ("Authorization", "Bearer check"))
        payload = body(SHORT, stream=False)
        print(f"{'server':10} {'c':>3} {'generator':8} {'req/s':>9} {'p50 ms':>8} "
              f"{'server core':>11} {'load core':>9} {'server ms/req':>13}")  # fmt: skip
        for name, port, proc in (
            ("direct", direct_port, direct),
            ("reference", ref_port, reference),
        ):
            call = load.Call("127.0.0.1", port, "/v1/chat/completions", headers, payload)
            for c in (1, 64):
                for generator in ("wrk", "hey", "asyncio"):
                    time.sleep(0.5)
                    t0, cpu0 = core_times(), proc.cpu()
                    if generator == "wrk":
                        out = _wrk(call, c, load_cpu, workdir)
                    elif generator == "hey":
                        out = _hey(call, c, load_cpu)
                    else:
                        out = _python(call, c, load_cpu)
                    busy = core_busy(t0, core_times())
                    cpu_ms = (proc.cpu() - cpu0) * 1000 / max(1.0, out.get("rps", 0) * DURATION)
                    if not out:
                        print(f"{name:10} {c:>3} {generator:8} not installed")
                        continue
                    print(
                        f"{name:10} {c:>3} {generator:8} {out['rps']:9.0f} {out['p50_ms']:8.3f} "
                        f"{busy[server_cpu]:>10.0%} {busy[load_cpu]:>9.0%} {cpu_ms:12.3f}",
                        flush=True,
                    )
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

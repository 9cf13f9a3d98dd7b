"""Run the benchmark: ``python -m benchmarks.run [--quick]`` from the repository root.

Starts the fast fake upstream, the targets (direct, reference, aigw, LiteLLM)
pinned to one core with the load on the other, measures them in interleaved
order, writes RESULTS.md, results.json and results.png, and prints the ratios
and which of issue #4's targets are met. Every process it starts is stopped
by pid before it returns, whatever happens. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import big_prompt, budget, load, machine, report, search, workers
from benchmarks.load import Call, Response
from benchmarks.procs import (
    Procs,
    core_busy,
    core_steal,
    core_times,
    cpus,
    free_port,
    wait_http,
)
from benchmarks.targets import (
    ACCESS_LOG,
    ROOT,
    WORK,
    Aigw,
    Env,
    Target,
    Unavailable,
    make_targets,
    probe,
)
from benchmarks.workload import SHORT, body, prompt_tokens, realistic

ALL_TARGETS = ["direct", "reference", "aigw", "litellm"]
# A throughput cell whose load core was busier than this measured the load side,
# not the target: it is repeated (up to SATURATED_RETRIES times) and discarded.
LOAD_CORE_SATURATED = 0.90
SATURATED_RETRIES = 2
# Every output file a run writes; the rest of the tree must be committed.
OUTPUTS = ("benchmarks/RESULTS.md", "benchmarks/results.json", "benchmarks/results.png")


class RunInvalid(Exception):
    """The run cannot produce honest figures (a count mismatch, a dirty tree): stop."""


def dirty_paths() -> list[str]:
    """Uncommitted changes outside the files this run writes (empty: clean, or not git)."""
    import subprocess

    done = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=normal"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return []
    paths = [line[3:] for line in done.stdout.splitlines() if line.strip()]
    return [p for p in paths if p not in OUTPUTS and not p.startswith("benchmarks/.work")]


@dataclass
class Plan:
    """How much of everything to do; ``--quick`` and full differ only here."""

    levels: list[int]
    prompts: list[str]
    stream_prompts: list[str]
    reps: int
    duration: float
    latency_rounds: int
    latency_per_round: int
    latency_prompts: list[str]
    ttfb_rounds: int
    ttfb_per_round: int
    chunk_streams_max: int
    chunk_cpu_budget: float
    chunk_wall_budget: float
    chunk_concurrency: int
    chunks_lo: int
    chunks_hi: int
    chunk_pace_ms: int
    slow_streams: int
    slow_waves: int
    slow_chunks: int
    slow_delay_ms: int
    slow_timeout: float
    search_keys: int
    search_per_query: int
    warmup_s: float
    big_tokens: int = 100_000
    big_rounds: int = 8
    big_per_round: int = 4

    @classmethod
    def full(cls) -> Plan:
        return cls(
            levels=[1, 10, 64],
            prompts=["short", "long"],
            stream_prompts=["short", "long"],
            reps=3,
            duration=4,
            latency_rounds=10,
            latency_per_round=300,
            latency_prompts=["short", "long"],
            ttfb_rounds=10,
            ttfb_per_round=100,
            chunk_streams_max=3000,
            chunk_cpu_budget=2.0,
            chunk_wall_budget=6.0,
            chunk_concurrency=20,
            chunks_lo=20,
            chunks_hi=120,
            chunk_pace_ms=2,
            slow_streams=1000,
            slow_waves=3,
            slow_chunks=20,
            slow_delay_ms=250,
            slow_timeout=120,
            search_keys=100_000,
            search_per_query=50,
            warmup_s=30,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            levels=[10],
            prompts=["short", "long"],
            stream_prompts=["short"],
            reps=1,
            duration=1,
            latency_rounds=3,
            latency_per_round=100,
            latency_prompts=["short"],
            ttfb_rounds=3,
            ttfb_per_round=30,
            chunk_streams_max=1000,
            chunk_cpu_budget=0.25,
            chunk_wall_budget=0.6,
            chunk_concurrency=20,
            chunks_lo=20,
            chunks_hi=80,
            chunk_pace_ms=2,
            slow_streams=1000,
            slow_waves=1,
            slow_chunks=10,
            slow_delay_ms=200,
            slow_timeout=40,
            search_keys=100_000,
            search_per_query=15,
            warmup_s=10,
            big_rounds=3,
            big_per_round=3,
        )


@dataclass
class TargetResult:
    name: str
    label: str
    available: bool = False
    reason: str = ""
    info: dict = field(default_factory=dict)
    rss_idle_mb: float | None = None
    throughput: list[dict] = field(default_factory=list)
    latency: dict = field(default_factory=dict)
    ttfb: dict = field(default_factory=dict)
    chunk: dict = field(default_factory=dict)
    slow: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    big_prompt: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _load_side_seconds() -> float:
    """CPU of the harness and its finished children (wrk runs as one)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _call_as(target: Target, token: str, raw_body: bytes) -> Call:
    headers = (("Content-Type", "application/json"), ("Authorization", f"Bearer {token}"))
    return Call("127.0.0.1", target.port, target.path, headers, raw_body)


def log(message: str) -> None:
    print(message, flush=True)


def _expect_stream(response: Response, chunks: int = 20) -> bool:
    return (
        response.status == 200
        and b"[DONE]" in response.body
        and response.body.count(b'"content"') >= chunks
    )


class Bench:
    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        self.quick = args.quick
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.workdir = WORK / f"run-{stamp}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.workdir, set(cpus()))
        self.targets: list[Target] = []
        self.results: dict[str, TargetResult] = {}
        self.started = time.time()
        self.stat0 = core_times()
        available = cpus()
        if len(available) >= 2:
            self.gateway_cpu: int | None = available[0]
            self.load_cpu: int | None = available[1]
        else:
            self.gateway_cpu = self.load_cpu = None
        self.wrk: str | None = None
        self.short = SHORT
        self.long = realistic()
        self.tokens = {"short": prompt_tokens(self.short), "long": prompt_tokens(self.long)}
        self.upstream_proc = None
        self.timings: dict[str, float] = {}
        self.background: dict[int, float] = {}
        self.workers: dict = {}

    # --- lifecycle ---------------------------------------------------------

    def messages(self, prompt: str) -> list[dict]:
        return self.short if prompt == "short" else self.long

    def setup(self) -> None:
        before = core_times()
        time.sleep(1.0)
        self.background = core_busy(before, core_times())
        busy = ", ".join(f"CPU {k} {v:.0%}" for k, v in self.background.items())
        if max(self.background.values(), default=0) > 0.15:
            log(f"warning: the machine is busy before we start ({busy}): expect noisy figures")
        else:
            log(f"machine idle before start ({busy})")
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})
            log(
                f"pinning: gateways on CPU {self.gateway_cpu}; load, upstream, harness on CPU {self.load_cpu}"
            )
        else:
            log("only one CPU: nothing pinned; figures are rougher")
        self.wrk = None if self.args.loadgen == "python" else load.ensure_wrk()
        if self.wrk is None:
            log("wrk unavailable: the asyncio client generates the load (less headroom)")
        port = free_port()
        self.upstream_proc = self.procs.start(
            "upstream",
            [sys.executable, "-m", "benchmarks.upstream", "--port", str(port)],
            cpu=self.load_cpu,
            cwd=ROOT,
        )
        wait_http(self.upstream_proc, f"http://127.0.0.1:{port}/health", 20)
        env = Env(
            gateway_cpu=self.gateway_cpu,
            load_cpu=self.load_cpu,
            upstream_url=f"http://127.0.0.1:{port}/v1",
            procs=self.procs,
            workdir=self.workdir,
            log=log,
        )
        self.env = env
        install = not self.quick or self.args.install_litellm
        targets = make_targets(self.args.targets, install_litellm_if_missing=install)
        # Boot them all at once on both cores (imports are slow), then pin each one.
        for target in targets:
            self.results[target.name] = TargetResult(target.name, target.label)
            self.targets.append(target)
            log(f"starting {target.label}")
            self._attempt(target, "start", target.launch, env)
        for target in targets:
            if target.reason:
                continue
            t0 = time.monotonic()
            if self._attempt(target, "start", target.ready, env) and self._attempt(
                target, "check", self.check, target
            ):
                assert target.server is not None
                if self.gateway_cpu is not None:
                    target.server.pin(self.gateway_cpu)
                log(f"  {target.name} ready on port {target.port} ({time.monotonic() - t0:.1f}s)")
        for target in targets:
            result = self.results[target.name]
            result.available = target.available
            result.reason = target.reason
            result.info = target.info

    def _attempt(self, target: Target, step: str, fn: Callable[..., None], *args: object) -> bool:
        try:
            fn(*args)
        except RunInvalid:
            raise
        except Exception as exc:  # a target that cannot start is reported, never fatal
            target.reason = str(exc).strip() or type(exc).__name__
            log(f"  {target.name}: not available ({step}): {target.reason.splitlines()[0][:300]}")
            if target.server is not None:
                target.server.stop()
            target.cleanup()
            return False
        return True

    def check(self, target: Target) -> None:
        """One non-stream and one stream request must come back well-formed."""
        deadline = time.monotonic() + 10
        while True:
            response = probe(target, body(self.short, stream=False))
            # A key just created reaches a gateway's cache within a moment.
            if response.status != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        status, content = response.status, response.body
        if status == 404 and target.name == "aigw":
            raise Unavailable(
                "POST /v1/chat/completions answered 404: aigw's proxy is not there yet"
            )
        if status != 200 or b'"choices"' not in content:
            raise Unavailable(f"non-stream check answered {status}: {content[:300]!r}")
        if target.name == "aigw":
            counted = response.header("x-aigw-input-tokens")
            if counted is None:
                raise Unavailable("aigw answered without x-aigw-input-tokens: is counting on?")
            long_counted = probe(target, body(self.long, stream=False)).header(
                "x-aigw-input-tokens"
            )
            for prompt, got in (("short", counted), ("long", long_counted)):
                want = self.tokens[prompt]
                if str(want) != got:
                    raise RunInvalid(
                        f"aigw counted {got} input tokens for the {prompt} prompt, the harness "
                        f"{want}: one of them is wrong, so no figure of this run can be trusted"
                    )
                target.info[f"input tokens counted, {prompt} prompt"] = got
        response = probe(target, body(self.short, stream=True))
        status, content = response.status, response.body
        if status != 200 or b"[DONE]" not in content or content.count(b'"content"') < 20:
            raise Unavailable(f"stream check answered {status}: {content[:300]!r}")

    def live(self) -> list[Target]:
        return [t for t in self.targets if t.available]

    def shutdown(self) -> None:
        self.procs.stop_all()
        for target in self.targets:
            with contextlib.suppress(Exception):
                target.cleanup()

    # --- helpers -----------------------------------------------------------

    def settle(self, target: Target, limit: float = 15.0) -> None:
        """Until the target is idle (work left over from the last run would skew the next)."""
        deadline = time.monotonic() + limit
        previous = target.cpu()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            current = target.cpu()
            if current - previous <= 0.01:  # under 10 % of a core
                return
            previous = current

    def rotate(self, items: list[Target], k: int) -> list[Target]:
        if not items:
            return items
        k %= len(items)
        return items[k:] + items[:k]

    def aio(self, coro):
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            return asyncio.run(coro)
        return uvloop.run(coro)

    def drive(self, call: Call, connections: int, duration: float, sse: bool) -> dict:
        """Closed-loop load: wrk when present, else the asyncio client."""
        if self.wrk:
            return load.run_wrk(
                self.wrk,
                call,
                connections=connections,
                duration=duration,
                cpu=self.load_cpu,
                workdir=self.workdir,
            )
        batch = self.aio(load.closed_loop(call, connections, duration=duration, sse=sse))
        ok = [r for r in batch.responses if r.status == 200]
        totals = [r.total * 1e6 for r in batch.responses]
        return {
            "requests": len(batch.responses),
            "duration_us": batch.wall * 1e6,
            "bytes": sum(len(r.body) for r in batch.responses),
            "errors": len(batch.failures) + len(batch.responses) - len(ok),
            "p50_us": load.percentile(totals, 50),
            "p90_us": load.percentile(totals, 90),
            "p99_us": load.percentile(totals, 99),
        }

    def guard(self, target: Target, phase: str, fn: Callable[..., None], *args: object) -> None:
        """Run one target's part of a phase; a failure is recorded, not raised."""
        if not target.available:
            return
        try:
            fn(*args)
        except RunInvalid:
            raise
        except Exception as exc:
            message = f"{phase}: {type(exc).__name__}: {exc}"
            self.results[target.name].errors.append(message)
            log(f"  {target.name}: {message}")
            (self.workdir / f"error-{target.name}-{phase}.txt").write_text(traceback.format_exc())
            if target.server is not None and not target.server.alive():
                target.reason = f"died during {phase}:\n{target.server.log_tail()}"
                self.results[target.name].available = False
                self.results[target.name].reason = target.reason

    # --- phases ------------------------------------------------------------
    # Each phase loops over the targets and hands one target's work to
    # ``guard``, so one target failing is recorded and the run goes on.

    def warm_up(self) -> None:
        """Every target serves a mix of requests for ``warmup_s`` before anything is measured.

        All targets at once (so the warm-up costs its duration once, not per
        target): a closed loop of 4 per target cycling short/long, whole/streamed.
        LiteLLM's latency drifts for ~10 s after start; 30 s covers that.
        """
        live = self.live()
        log(f"warming up {len(live)} targets together for {self.plan.warmup_s:g}s")
        calls = {
            t.name: [
                (t.call(body(self.messages(prompt), stream)), stream)
                for prompt in ("short", "long")
                for stream in (False, True)
            ]
            for t in live
        }

        async def warm(name: str, deadline: float) -> int:
            done = 0
            while time.monotonic() < deadline:
                for call, stream in calls[name]:
                    batch = await load.closed_loop(call, 4, count=40, duration=2.0, sse=stream)
                    done += len(batch.responses)
            return done

        async def everyone() -> dict[str, int]:
            deadline = time.monotonic() + self.plan.warmup_s
            counts = await asyncio.gather(*(warm(t.name, deadline) for t in live))
            return dict(zip([t.name for t in live], counts, strict=True))

        t0 = time.monotonic()
        counts = self.aio(everyone())
        seconds = time.monotonic() - t0
        for target in live:
            self.guard(target, "warm-up", self._after_warm, target, counts[target.name], seconds)

    def _after_warm(self, target: Target, requests: int, seconds: float) -> None:
        self.settle(target)
        result = self.results[target.name]
        result.rss_idle_mb = round(target.rss() / 2**20, 1)
        assert target.server is not None
        target.info["processes"] = len(target.server.pids())
        target.info["warm-up"] = f"{seconds:.0f} s, {requests} requests"
        log(
            f"  {target.name}: {requests} warm-up requests in {seconds:.0f}s; "
            f"idle RSS {result.rss_idle_mb} MB"
        )

    def throughput(self) -> None:
        plan = self.plan
        combos = [
            (stream, prompt, c)
            for stream in (False, True)
            for prompt in (plan.stream_prompts if stream else plan.prompts)
            for c in plan.levels
        ]
        log(f"throughput: {len(combos)} combinations x {plan.reps} rounds x {plan.duration:g}s")
        for rep in range(plan.reps):
            for i, (stream, prompt, c) in enumerate(combos):
                for target in self.rotate(self.live(), rep + i):
                    self.guard(
                        target, "throughput", self._throughput_one, target, stream, prompt, c, rep
                    )

    def _throughput_one(self, target: Target, stream: bool, prompt: str, c: int, rep: int) -> None:
        """One cell; repeated while the load core was saturated (then it measured the load
        side); the saturated attempts stay in results.json marked ``discarded``."""
        for attempt in range(SATURATED_RETRIES + 1):
            row = self._throughput_cell(target, stream, prompt, c, rep)
            busy = row["load_core_busy"]
            # direct is load-bound by design: its cells are floors, never repeated.
            if target.name == "direct" or busy is None or busy <= LOAD_CORE_SATURATED:
                return
            row["discarded"] = f"load core {busy:.0%} busy"
            log(f"    discarded: load core {busy:.0%} busy (attempt {attempt + 1})")
        log(f"    {target.name}: load core saturated in every attempt; the cell has no figure")

    def _throughput_cell(self, target: Target, stream: bool, prompt: str, c: int, rep: int) -> dict:
        call = target.call(body(self.messages(prompt), stream))
        self.settle(target)
        up = self.upstream_proc
        stat0, cpu0, db0 = core_times(), target.cpu(), target.side_cpu()
        up0 = up.cpu() if up else None
        load0 = _load_side_seconds()
        out = self.drive(call, c, self.plan.duration, stream)
        cpu1, db1, stat1 = target.cpu(), target.side_cpu(), core_times()
        up1 = up.cpu() if up else None
        load_side = _load_side_seconds() - load0 + ((up1 - up0) if up0 and up1 else 0.0)
        seconds = out["duration_us"] / 1e6
        n = max(1, out["requests"])
        busy = core_busy(stat0, stat1)
        row = {
            "mode": "stream" if stream else "json",
            "prompt": prompt,
            "c": c,
            "rep": rep,
            "requests": out["requests"],
            "rps": out["requests"] / seconds if seconds else 0.0,
            "cpu_ms": (cpu1 - cpu0) * 1000 / n,
            "db_cpu_ms": (db1 - db0) * 1000 / n if db0 is not None and db1 is not None else None,
            "p50_ms": out["p50_us"] / 1000,
            "p99_ms": out["p99_us"] / 1000,
            "errors": out["errors"],
            "bytes_per_response": out["bytes"] / n,
            "gateway_core_busy": busy.get(self.gateway_cpu)
            if self.gateway_cpu is not None
            else None,
            "load_core_busy": busy.get(self.load_cpu) if self.load_cpu is not None else None,
            "upstream_cpu_share": (up1 - up0) / seconds if seconds and up0 and up1 else None,
            # wrk + fake upstream + harness: how much of the load core our own load side used.
            "load_side_share": load_side / seconds if seconds else None,
            # Whatever else ran on the gateway core meanwhile (other tenants, PostgreSQL).
            "gateway_core_other": max(
                0.0, busy.get(self.gateway_cpu, 0.0) - (cpu1 - cpu0) / seconds
            )
            if seconds and self.gateway_cpu is not None
            else None,
        }
        self.results[target.name].throughput.append(row)
        log(
            f"  {target.name:9} {row['mode']:6} {prompt:5} c={c:<3} "
            f"{row['rps']:9.0f}/s  cpu {row['cpu_ms']:7.3f} ms/req  "
            f"p50 {row['p50_ms']:8.2f} ms  err {row['errors']}"
        )
        return row

    def latency(self) -> None:
        """c=1, interleaved rounds: every round visits every target, in rotating order.

        The asyncio client sends the same number of requests to every target in
        every round, so each p99 rests on as many samples (wrk's fixed duration
        would give the fast targets ten times more). p50 added = median over
        rounds of (target - direct) in the same round; p99 added = p99 of all
        of a target's samples - p99 of all of direct's.
        """
        plan = self.plan
        for prompt in plan.latency_prompts:
            log(
                f"latency at c=1 ({prompt} prompt): {plan.latency_rounds} interleaved rounds x "
                f"{plan.latency_per_round} requests"
            )
            rounds: dict[str, list[dict]] = {t.name: [] for t in self.live()}
            samples: dict[str, list[float]] = {t.name: [] for t in self.live()}
            for r in range(plan.latency_rounds):
                for target in self.rotate(self.live(), r):
                    self.guard(
                        target, "latency", self._c1_one, target, prompt, False, r, rounds, samples
                    )
            self._summarize_rounds(rounds, samples, "latency", prompt, "")

    def ttfb(self) -> None:
        """Streaming time to the first content event at c=1, interleaved rounds."""
        plan = self.plan
        log(f"streaming TTFB at c=1: {plan.ttfb_rounds} rounds x {plan.ttfb_per_round} streams")
        rounds: dict[str, list[dict]] = {t.name: [] for t in self.live()}
        samples: dict[str, list[float]] = {t.name: [] for t in self.live()}
        for r in range(plan.ttfb_rounds):
            for target in self.rotate(self.live(), r):
                self.guard(target, "ttfb", self._c1_one, target, "short", True, r, rounds, samples)
        self._summarize_rounds(rounds, samples, "ttfb", "short", "ttfb_")

    def _c1_one(
        self,
        target: Target,
        prompt: str,
        stream: bool,
        r: int,
        rounds: dict[str, list[dict]],
        samples: dict[str, list[float]],
    ) -> None:
        self.settle(target)
        n = self.plan.ttfb_per_round if stream else self.plan.latency_per_round
        call = target.call(body(self.messages(prompt), stream))
        responses = self.aio(load.sequential(call, n, sse=stream))
        ok = [x for x in responses if (_expect_stream(x) if stream else x.status == 200)]
        if len(ok) < len(responses):
            raise RuntimeError(f"{len(responses) - len(ok)}/{len(responses)} bad responses")
        times = [(x.ttfb if stream else x.total) * 1000 for x in responses]
        samples[target.name] += times
        rounds[target.name].append(
            {
                "round": r,
                "p50_ms": statistics.median(times),
                "p99_ms": load.percentile(times, 99),
                "total_p50_ms": statistics.median(x.total * 1000 for x in responses),
            }
        )

    def _summarize_rounds(
        self,
        rounds: dict[str, list[dict]],
        samples: dict[str, list[float]],
        attr: str,
        prompt: str,
        prefix: str,
    ) -> None:
        direct = {row["round"]: row for row in rounds.get("direct", [])}
        direct_p99 = load.percentile(samples.get("direct") or [], 99)
        for name, rows in rounds.items():
            if not rows:
                continue
            p50 = statistics.median(row["p50_ms"] for row in rows)
            p99 = load.percentile(samples[name], 99)
            summary: dict = {
                "rounds": rows,
                "samples": len(samples[name]),
                f"{prefix}p50_ms": p50,
                f"{prefix}p99_ms": p99,
            }
            line = f"  {name:9} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms"
            paired = [
                row["p50_ms"] - direct[row["round"]]["p50_ms"]
                for row in rows
                if row["round"] in direct
            ]
            if name != "direct" and paired:
                summary[f"added_{prefix}p50_ms"] = statistics.median(paired)
                summary[f"added_{prefix}p99_ms"] = p99 - direct_p99
                line += (
                    f"   added p50 {summary[f'added_{prefix}p50_ms']:+8.3f} ms"
                    f"  p99 {summary[f'added_{prefix}p99_ms']:+8.3f} ms"
                )
            getattr(self.results[name], attr)[prompt] = summary
            log(line)

    def per_chunk(self) -> None:
        """CPU per relayed chunk: streams of two lengths; the difference is per chunk.

        "paced": chunks a few ms apart, so each one is its own read and write
        (what a real model's token stream costs). "burst": chunks written back
        to back, so reads coalesce (the cheapest case). The number of streams
        adapts to the target's speed so a slow gateway does not take minutes.
        """
        plan = self.plan
        log(
            f"CPU per chunk: streams of {plan.chunks_lo} and {plan.chunks_hi} chunks, paced "
            f"{plan.chunk_pace_ms} ms apart and in a burst, c={plan.chunk_concurrency}"
        )
        for target in self.live():
            self.guard(target, "per-chunk", self._per_chunk_one, target)

    def _per_chunk_one(self, target: Target) -> None:
        plan = self.plan
        out: dict = {}
        for style, pace in (("paced", plan.chunk_pace_ms), ("burst", 0)):
            per_stream: dict[int, float] = {}
            for chunks in (plan.chunks_hi, plan.chunks_lo):
                knobs = f" bench:chunks={chunks}" + (f" bench:delay_ms={pace}" if pace else "")
                call = target.call(body(self.short, stream=True, knobs=knobs))
                # Enough streams for about chunk_cpu_budget seconds of the target's CPU...
                cost = per_stream.get(plan.chunks_hi) or self._stream_cost(target, call)
                n = int(plan.chunk_cpu_budget / max(cost, 1e-6))
                if pace:  # ...and about chunk_wall_budget seconds of waiting on the pace.
                    wall = (chunks + 1) * pace / 1000
                    n = min(n, int(plan.chunk_wall_budget * plan.chunk_concurrency / wall))
                n = max(plan.chunk_concurrency, min(plan.chunk_streams_max, n))
                self.settle(target)
                cpu0 = target.cpu()
                batch = self.aio(load.closed_loop(call, plan.chunk_concurrency, count=n, sse=True))
                cpu1 = target.cpu()
                good = [x for x in batch.responses if _expect_stream(x, chunks)]
                if len(good) < n * 0.9:
                    raise RuntimeError(
                        f"only {len(good)}/{n} {style} streams completed ({batch.failures[:2]})"
                    )
                per_stream[chunks] = (cpu1 - cpu0) / n
                out[f"streams_{style}_{chunks}"] = n
            lo, hi = plan.chunks_lo, plan.chunks_hi
            us = (per_stream[hi] - per_stream[lo]) / (hi - lo) * 1e6
            out[f"cpu_us_per_chunk_{style}"] = us
            out[f"cpu_ms_per_stream_{style}"] = {str(k): v * 1000 for k, v in per_stream.items()}
            log(
                f"  {target.name:9} {style}: {us:7.2f} us/chunk  "
                f"({per_stream[lo] * 1000:.3f} ms per {lo}-chunk stream, "
                f"{per_stream[hi] * 1000:.3f} ms per {hi})"
            )
        self.results[target.name].chunk = out

    def _stream_cost(self, target: Target, call: Call) -> float:
        """CPU seconds per stream, roughly, from a few streams."""
        self.settle(target)
        cpu0 = target.cpu()
        self.aio(load.closed_loop(call, 4, count=8, sse=True))
        return (target.cpu() - cpu0) / 8

    def slow_streams(self) -> None:
        plan = self.plan
        log(
            f"memory: {plan.slow_waves} wave(s) of {plan.slow_streams} concurrent slow streams "
            f"({plan.slow_chunks} chunks, {plan.slow_delay_ms} ms apart)"
        )
        for target in self.live():
            if target.name == "direct":
                continue
            if target.name == "litellm" and self.quick:
                log("  litellm: skipped in --quick (it takes half a minute per wave)")
                continue
            self.guard(target, "slow-streams", self._slow_one, target)

    def _slow_one(self, target: Target) -> None:
        plan = self.plan
        knobs = f" bench:chunks={plan.slow_chunks} bench:delay_ms={plan.slow_delay_ms}"
        call = target.call(body(self.short, stream=True, knobs=knobs))
        self.settle(target)
        before = target.rss()
        waves = []
        for w in range(plan.slow_waves):
            peak = [0]

            def sample(_active: int, peak: list[int] = peak) -> None:
                peak[0] = max(peak[0], target.rss())

            wave = self.aio(
                load.slow_stream_wave(
                    call,
                    plan.slow_streams,
                    timeout=plan.slow_timeout,
                    sample=sample,
                    expect=lambda x: _expect_stream(x, plan.slow_chunks),
                )
            )
            self.settle(target)
            time.sleep(0.5)
            after = target.rss()
            row = {
                "wave": w + 1,
                "completed": wave.completed,
                "failed": len(wave.failures),
                "failures": wave.failures[:3],
                "peak_concurrent": wave.peak_concurrent,
                "peak_rss_mb": round(peak[0] / 2**20, 1),
                "after_rss_mb": round(after / 2**20, 1),
                "wall_s": round(wave.wall, 2),
            }
            waves.append(row)
            log(
                f"  {target.name:9} wave {w + 1}: {wave.completed}/{plan.slow_streams} ok, "
                f"peak {wave.peak_concurrent} concurrent, RSS peak {row['peak_rss_mb']} MB, "
                f"after {row['after_rss_mb']} MB, {wave.wall:.1f}s"
            )
        self.results[target.name].slow = {
            "before_rss_mb": round(before / 2**20, 1),
            "waves": waves,
            "extra_peak_mb": round(max(w["peak_rss_mb"] for w in waves) - before / 2**20, 1),
            # Wave 1 to the last: the allocator keeps wave 1's high-water mark, a leak grows on.
            "growth_mb": round(waves[-1]["after_rss_mb"] - waves[0]["after_rss_mb"], 1),
        }

    def search(self) -> None:
        for target in self.live():
            if not isinstance(target, Aigw):
                continue
            if not target.database_url:
                self.results[target.name].search = {"skipped": "no direct database access"}
                continue
            self.guard(target, "search", self._search_one, target)

    def _search_one(self, target: Aigw) -> None:
        plan = self.plan
        log(f"admin search: seeding {plan.search_keys:,} keys by COPY")
        seeded = self.aio(search.seed(target, plan.search_keys))
        log(f"  seeded in {seeded['seconds']:.1f}s")
        out = self.aio(search.measure(target, plan.search_per_query, plan.search_keys))
        out["seed"] = seeded
        self.results[target.name].search = out
        for q in out["queries"]:
            log(
                f"  {q['query']:40} total={q['total']!s:>7}  p50 {q['p50_ms']:6.2f} ms  "
                f"p95 {q['p95_ms']:6.2f} ms  CPU aigw {q['aigw_cpu_ms'] or 0:5.2f} ms "
                f"+ PostgreSQL {q['db_cpu_ms'] or 0:5.2f} ms"
            )
        log(f"  all queries: p50 {out['p50_ms']:.2f} ms, p95 {out['p95_ms']:.2f} ms")

    def big_prompt(self) -> None:
        """Time to first byte of a ~100k-token prompt: what counting it adds, against
        tiktoken's own time to encode the same text on the gateway core."""
        aigw = next((t for t in self.live() if isinstance(t, Aigw)), None)
        direct = next((t for t in self.live() if t.name == "direct"), None)
        if aigw is None or direct is None:
            log("big prompt: needs aigw and direct; skipped")
            return
        self.guard(aigw, "big-prompt", self._big_prompt, aigw, direct)

    def _big_prompt(self, aigw: Aigw, direct: Target) -> None:
        self.results[aigw.name].big_prompt = big_prompt.measure(self, aigw, direct, RunInvalid)

    def scaling(self) -> None:
        """``--workers 2`` against one (benchmarks/workers.py)."""
        log(f"workers: aigw --workers 1 and 2, c={workers.CONNECTIONS}, capacity from CPU")
        try:
            self.workers = workers.run(self)
        except RunInvalid:
            raise
        except Exception as exc:  # recorded, never fatal (as for every phase)
            self.workers = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  workers: {self.workers['error']}")
            (self.workdir / "error-workers.txt").write_text(traceback.format_exc())

    # --- the whole run -----------------------------------------------------

    def run(self) -> dict:
        self.setup()
        if not self.live():
            raise SystemExit("no target could be started; see the messages above")
        phases = {
            "throughput": self.throughput,
            "latency": self.latency,
            "ttfb": self.ttfb,
            "chunk": self.per_chunk,
            "memory": self.slow_streams,
            # budget before search: search seeds 100k keys straight into the database
            # with stand-in key codes, and the budget phase's second aigw (Redis store)
            # starts on that database, where the startup check refuses codes it cannot open.
            "budget": lambda: budget.phase(self),
            "search": self.search,
            "bigprompt": self.big_prompt,
            "workers": self.scaling,
        }
        self.warm_up()
        self.timings["setup+warm-up"] = round(time.time() - self.started, 1)
        for name, phase in phases.items():
            if name in self.args.skip:
                log(f"{name}: skipped (--skip)")
                continue
            t0 = time.monotonic()
            phase()
            self.timings[name] = round(time.monotonic() - t0, 1)
        return self.collect()

    def collect(self) -> dict:
        stat1 = core_times()
        return {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": self.args.command_line,
            "quick": self.quick,
            "seconds": round(time.time() - self.started),
            "phase_seconds": self.timings,
            "plan": asdict(self.plan),
            "prompt_tokens": self.tokens,
            "pinning": {"gateway_cpu": self.gateway_cpu, "load_cpu": self.load_cpu},
            "loadgen": "wrk" if self.wrk else "asyncio client",
            "nice": self.args.nice,
            "access_log": ACCESS_LOG,
            "cpu_busy_before_start": self.background,
            "cpu_busy_during_run": core_busy(self.stat0, stat1),
            "cpu_steal_during_run": core_steal(self.stat0, stat1),
            "machine": machine.describe(),
            "targets": {name: asdict(result) for name, result in self.results.items()},
            "workers": self.workers,
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="about a minute: fewer levels, one round"
    )
    parser.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma-separated subset of {','.join(ALL_TARGETS)} (direct is always included)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated phases to skip: "
        "throughput,latency,ttfb,chunk,memory,search,bigprompt,budget,workers",
    )
    parser.add_argument(
        "--loadgen",
        choices=["wrk", "python"],
        default="wrk",
        help="wrk (default) or the asyncio client",
    )
    parser.add_argument(
        "--install-litellm",
        action="store_true",
        help="install LiteLLM's proxy when missing, also with --quick (the full run always does)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds every target serves before measuring (full run 30, --quick 10)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness for the harness and everything it starts (e.g. -10 on a "
        "shared machine, so other tenants' work interferes less; negative needs root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where RESULTS.md, results.json and results.png go "
        "(default: benchmarks/ for a full run, benchmarks/.work/quick/ for --quick)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = set(names) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    args.targets = ["direct", *[n for n in ALL_TARGETS if n in names and n != "direct"]]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.out is None:
        args.out = ROOT / "benchmarks" / (".work/quick" if args.quick else "")
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    args.command_line = f".venv/bin/python -m benchmarks.run {shown}".strip()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.warmup is not None:
        plan.warmup_s = args.warmup
    committed = args.out.resolve() == (ROOT / "benchmarks").resolve()
    if committed and (dirty := dirty_paths()):
        log(
            "refusing to write the committed results from a tree with uncommitted changes "
            f"({', '.join(dirty[:5])}{', …' if len(dirty) > 5 else ''}): commit first, "
            "or pass --out DIR to write elsewhere"
        )
        return 2

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError as exc:
            log(f"--nice {args.nice} refused ({exc}); running at the default priority")
            args.nice = 0
    bench = Bench(plan, args)
    log(f"aigw benchmark ({'quick' if args.quick else 'full'}); scratch in {bench.workdir}")
    try:
        results = bench.run()
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except RunInvalid as exc:
        log(f"run invalid, nothing written: {exc}")
        return 1
    finally:
        bench.shutdown()
    if committed and (dirty := dirty_paths()):
        log(f"the tree changed during the run ({', '.join(dirty[:5])}): nothing written")
        return 2
    written = report.write(results, args.out)
    log("")
    log(report.summary_text(results))
    for path in written:
        log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

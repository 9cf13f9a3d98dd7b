"""Turn a run's raw results into RESULTS.md, results.json, results.png and a summary."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import budget
from benchmarks.targets import WORK

ORDER = ["direct", "reference", "aigw", "litellm"]
COLORS = {"direct": "#9e9e9e", "reference": "#4c78a8", "aigw": "#2ca02c", "litellm": "#d62728"}


# --- derived figures ----------------------------------------------------------


def _median_rows(rows: list[dict], mode: str, prompt: str, c: int, key: str) -> float | None:
    values = [
        r[key]
        for r in rows
        if r["mode"] == mode
        and r["prompt"] == prompt
        and r["c"] == c
        and r.get(key) is not None
        and not r.get("discarded")  # the load core was saturated: it measured the load side
    ]
    return statistics.median(values) if values else None


def throughput_table(result: dict) -> dict[tuple[str, str, int], dict]:
    rows = result.get("throughput") or []
    out = {}
    for mode, prompt, c in sorted({(r["mode"], r["prompt"], r["c"]) for r in rows}):
        out[(mode, prompt, c)] = {
            key: _median_rows(rows, mode, prompt, c, key)
            for key in (
                "rps",
                "cpu_ms",
                "db_cpu_ms",
                "p50_ms",
                "p99_ms",
                "gateway_core_busy",
                "gateway_core_other",
                "load_core_busy",
                "load_side_share",
            )
        }
        out[(mode, prompt, c)]["errors"] = sum(
            r["errors"] for r in rows if (r["mode"], r["prompt"], r["c"]) == (mode, prompt, c)
        )
    return out


def _cpu_level(table: dict, mode: str, prompt: str) -> float | None:
    """CPU per request at c=10 (busy enough to be steady, light enough that the
    requests still in flight when a run stops hardly count), else the nearest level."""
    levels = sorted(
        c for (m, p, c), v in table.items() if m == mode and p == prompt and v["cpu_ms"] is not None
    )
    if not levels:
        return None
    c = min(levels, key=lambda x: abs(x - 10))
    return table[(mode, prompt, c)]["cpu_ms"]


def _db_level(table: dict) -> float | None:
    levels = sorted(c for (m, p, c) in table if m == "json" and p == "short")
    if not levels:
        return None
    c = min(levels, key=lambda x: abs(x - 10))
    return table[("json", "short", c)].get("db_cpu_ms")


def headline(result: dict) -> dict:
    table = throughput_table(result)

    def peak(mode: str, prompt: str) -> float | None:
        # A cell whose load core was saturated in every attempt has no figure.
        values = [
            v["rps"]
            for (m, p, _c), v in table.items()
            if m == mode and p == prompt and v["rps"] is not None
        ]
        return max(values) if values else None

    latency = (result.get("latency") or {}).get("short") or {}
    latency_long = (result.get("latency") or {}).get("long") or {}
    ttfb = (result.get("ttfb") or {}).get("short") or {}
    slow = result.get("slow") or {}
    search = result.get("search") or {}
    return {
        "json_rps": peak("json", "short"),
        "stream_rps": peak("stream", "short"),
        "json_rps_long": peak("json", "long"),
        "stream_rps_long": peak("stream", "long"),
        "cpu_ms": _cpu_level(table, "json", "short"),
        "db_cpu_ms": _db_level(table),
        "cpu_ms_long": _cpu_level(table, "json", "long"),
        "stream_cpu_ms": _cpu_level(table, "stream", "short"),
        "p50_ms": latency.get("p50_ms"),
        "p99_ms": latency.get("p99_ms"),
        "added_p50_ms": latency.get("added_p50_ms"),
        "added_p99_ms": latency.get("added_p99_ms"),
        "added_p50_long_ms": latency_long.get("added_p50_ms"),
        "ttfb_p50_ms": ttfb.get("ttfb_p50_ms"),
        "added_ttfb_ms": ttfb.get("added_ttfb_p50_ms"),
        "cpu_us_per_chunk": (result.get("chunk") or {}).get("cpu_us_per_chunk_paced"),
        "cpu_us_per_chunk_burst": (result.get("chunk") or {}).get("cpu_us_per_chunk_burst"),
        "rss_idle_mb": result.get("rss_idle_mb"),
        "rss_extra_mb": slow.get("extra_peak_mb"),
        "rss_growth_mb": slow.get("growth_mb"),
        "search_p50_ms": search.get("p50_ms"),
        "search_p95_ms": search.get("p95_ms"),
        "search_worst_p95_ms": max(
            (q["p95_ms"] for q in search.get("queries") or []), default=None
        ),
        "search_worst_query": max(
            search.get("queries") or [{}], key=lambda q: q.get("p95_ms", 0)
        ).get("query"),
        **_big_prompt(result.get("big_prompt") or {}),
    }


def _big_prompt(big: dict) -> dict:
    cases = big.get("cases") or {}
    bound = next((v for k, v in cases.items() if "bound" in k), {})
    counted = next((v for k, v in cases.items() if "counted" in k), {})
    return {
        "big_encode_ms": big.get("encode_ms"),
        "big_added_counted_ms": counted.get("added_ms"),
        "big_added_counted_x": counted.get("added_vs_encode"),
        "big_added_bound_ms": bound.get("added_ms"),
        "big_added_bound_x": bound.get("added_vs_encode"),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def checks(results: dict) -> list[dict]:
    """Issue #4's targets, each met / missed / n/a, with the figures behind it."""
    targets = results["targets"]
    heads = {n: headline(r) for n, r in targets.items() if r.get("available")}
    a = heads.get("aigw")
    ll = heads.get("litellm")
    ref = heads.get("reference")
    out = []

    def add(
        name: str, value: float | None, limit: float | None, ok_if_le: bool, shown: str
    ) -> None:
        if a is None:
            why = "aigw not available" if "aigw" in targets else "aigw not in this run"
            out.append({"target": name, "status": "n/a", "detail": why})
            return
        if value is None or limit is None:
            out.append({"target": name, "status": "n/a", "detail": "not measured"})
            return
        ok = value <= limit if ok_if_le else value >= limit
        out.append({"target": name, "status": "met" if ok else "missed", "detail": shown})

    def g(h: dict | None, key: str) -> float | None:
        return h.get(key) if h else None

    r = _ratio(g(a, "json_rps"), g(ll, "json_rps"))
    add("non-stream req/s >= 10x LiteLLM", r, 10, False, f"{_fmt(r, 1)}x")
    r = _ratio(g(a, "stream_rps"), g(ll, "stream_rps"))
    add("streams/s >= 20x LiteLLM", r, 20, False, f"{_fmt(r, 1)}x")
    r = _ratio(g(a, "added_p50_ms"), g(ll, "added_p50_ms"))
    add("added latency <= 1/10 of LiteLLM's (p50, c=1)", r, 0.1, True, f"{_fmt(r, 3)}x")
    r = _ratio(g(a, "cpu_ms"), g(ref, "cpu_ms"))
    add("CPU per request <= 1.15x reference (#15; #4 asked 2x)", r, 1.15, True, f"{_fmt(r, 2)}x")
    r = _ratio(g(a, "stream_cpu_ms"), g(ref, "stream_cpu_ms"))
    add("CPU per stream <= 1.1x reference (#15)", r, 1.1, True, f"{_fmt(r, 2)}x")
    v = g(a, "added_p50_ms")
    add("added p50 <= 0.5 ms (c=1)", v, 0.5, True, f"{_fmt(v, 3)} ms")
    v = g(a, "added_p99_ms")
    add("added p99 <= 1.5 ms (c=1)", v, 1.5, True, f"{_fmt(v, 3)} ms")
    v = g(a, "added_ttfb_ms")
    add("streaming TTFB added <= 1 ms", v, 1.0, True, f"{_fmt(v, 3)} ms")
    v = g(a, "cpu_us_per_chunk_burst")
    add(
        "CPU per relayed chunk <= 10 us (burst; paced shown for context)",
        v,
        10,
        True,
        f"burst {_fmt(v, 1)} us; paced {_fmt(g(a, 'cpu_us_per_chunk'), 1)} us "
        f"(reference paced {_fmt(g(ref, 'cpu_us_per_chunk'), 1)} us)",
    )
    r = _ratio(g(a, "cpu_us_per_chunk_burst"), g(ref, "cpu_us_per_chunk_burst"))
    add(
        "CPU per relayed chunk <= 1.5x the reference passthrough's (#15, burst)",
        r,
        1.5,
        True,
        f"{_fmt(r, 2)}x ({_fmt(g(a, 'cpu_us_per_chunk_burst'), 1)} us vs "
        f"{_fmt(g(ref, 'cpu_us_per_chunk_burst'), 1)} us)",
    )
    v = g(a, "rss_idle_mb")
    add("idle RSS <= 120 MB per worker (#15; #4 asked 150)", v, 120, True, f"{_fmt(v, 0)} MB")
    v = g(a, "rss_extra_mb")
    add("<= 100 MB more for 1,000 concurrent streams", v, 100, True, f"+{_fmt(v, 0)} MB")
    v = g(a, "rss_growth_mb")
    add(
        "no RSS growth across waves (<= 10 MB, wave 1 to last)",
        None if v is None else abs(v) if v > 0 else 0.0,
        10,
        True,
        f"{_fmt(v, 1)} MB",
    )
    v = g(a, "search_worst_p95_ms")
    add(
        "search over 100k keys p95 <= 20 ms, every query shape",
        v,
        20,
        True,
        f"worst {_fmt(v, 2)} ms ({g(a, 'search_worst_query')}); all {_fmt(g(a, 'search_p95_ms'), 2)} ms",
    )
    v = g(a, "big_added_counted_x")
    add(
        "100k-token prompt, counted: added TTFB <= 1.1x tiktoken's encode",
        v,
        1.1,
        True,
        f"{_fmt(v, 2)}x ({_fmt(g(a, 'big_added_counted_ms'), 1)} ms vs encode "
        f"{_fmt(g(a, 'big_encode_ms'), 1)} ms)",
    )
    v = g(a, "big_added_bound_x")
    add(
        "100k-token prompt, byte bound proves it: added TTFB ~ 0 (<= 0.1x encode)",
        v,
        0.1,
        True,
        f"{_fmt(v, 2)}x ({_fmt(g(a, 'big_added_bound_ms'), 1)} ms)",
    )
    w = results.get("workers") or {}
    r = w.get("capacity_ratio")
    add(
        "--workers 2 >= 1.8x one worker's req/s (#15; CPU-normalised: 2 x CPU per request "
        "at an equal load, one worker over two)",
        r,
        1.8,
        False,
        f"{_fmt(r, 2)}x (open loop {_fmt(w.get('open_loop_ratio'), 2)}x; raw req/s "
        f"{_fmt(w.get('raw_ratio'), 2)}x, not capacity: the load side shares the two cores)",
    )
    return out


def _workers_section(w: dict) -> list[str]:
    """``--workers 2`` against one (benchmarks/workers.py explains the ratios)."""
    parts = ["## `aigw serve --workers 2` against one worker", ""]
    if "w2" not in w:
        return [*parts, f"Not measured{': ' + w['error'] if w.get('error') else ''}.", ""]
    rows = [
        [
            f"{n} worker{'s' if n > 1 else ''}",
            _fmt(w[f"w{n}"]["rps"], 0),
            _fmt(w[f"w{n}"]["cpu_ms"], 3),
            _fmt(w[f"w{n}"].get("paced_cpu_ms"), 3),
            f"{w[f'w{n}']['busiest_share']:.0%}",
        ]
        for n in (1, 2)
    ]
    rate = w.get("paced_rate")
    parts.append(
        _table(
            [
                "aigw",
                "req/s (raw, wrk)",
                "gateway CPU ms/req (wrk)",
                f"gateway CPU ms/req ({rate} req/s)",
                "busiest worker's connections",
            ],
            rows,
        )
    )
    parts += [
        "",
        f"Capacity with 2 workers: **{_fmt(w.get('capacity_ratio'), 2)}x** one worker's, "
        f"CPU-normalised (2 x the ratio of CPU per request, both at {rate} req/s: what two "
        "workers would serve with a core each, not req/s measured here; under wrk "
        f"c={w['connections']} the same ratio is {_fmt(w.get('closed_loop_cpu_ratio'), 2)}x); "
        f"{_fmt(w.get('open_loop_ratio'), 2)}x under an open-loop load, where the worker holding "
        f"most connections saturates first; raw req/s {_fmt(w.get('raw_ratio'), 2)}x (wrk and the "
        "fake upstream share the two cores). Method: `benchmarks/workers.py`.",
        "",
    ]
    return parts


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratios(results: dict) -> list[tuple[str, str, str]]:
    heads = {n: headline(r) for n, r in results["targets"].items() if r.get("available")}
    pairs = [("aigw", "litellm"), ("aigw", "reference"), ("reference", "litellm")]
    rows = []
    for num, den in pairs:
        if num not in heads or den not in heads:
            continue
        a, b = heads[num], heads[den]
        parts = [
            f"req/s {_fmt(_ratio(a['json_rps'], b['json_rps']), 2)}x",
            f"streams/s {_fmt(_ratio(a['stream_rps'], b['stream_rps']), 2)}x",
            f"CPU/req {_fmt(_ratio(a['cpu_ms'], b['cpu_ms']), 3)}x",
            f"CPU/stream {_fmt(_ratio(a['stream_cpu_ms'], b['stream_cpu_ms']), 3)}x",
            f"added p50 {_fmt(_ratio(a['added_p50_ms'], b['added_p50_ms']), 3)}x",
        ]
        rows.append((num, den, ", ".join(parts)))
    return rows


# --- text ---------------------------------------------------------------------


def summary_text(results: dict) -> str:
    lines = ["== summary (one core per gateway; medians) =="]
    for name in ORDER:
        r = results["targets"].get(name)
        if r is None:
            continue
        if not r.get("available"):
            lines.append(f"{name:9}  not available: {r.get('reason', '').splitlines()[0][:160]}")
            continue
        h = headline(r)
        lines.append(
            f"{name:9}  {_fmt(h['json_rps'], 0):>7} req/s  {_fmt(h['stream_rps'], 0):>6} streams/s  "
            f"CPU {_fmt(h['cpu_ms'], 3)} ms/req  added p50 {_fmt(h['added_p50_ms'], 3)} ms  "
            f"p99 {_fmt(h['added_p99_ms'], 3)} ms  idle RSS {_fmt(h['rss_idle_mb'], 0)} MB"
        )
    for num, den, text in ratios(results):
        lines.append(f"{num}/{den}: {text}")
    lines.append("targets (issues #4 and #15; met and missed side by side):")
    for c in checks(results):
        lines.append(f"  [{c['status']:6}] {c['target']}: {c['detail']}")
    lines += budget.summary((results["targets"].get("aigw") or {}).get("budget") or {})
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def markdown(results: dict, chart: str | None) -> str:
    targets = results["targets"]
    names = [n for n in ORDER if n in targets]
    live = [n for n in names if targets[n].get("available")]
    heads = {n: headline(targets[n]) for n in live}
    m = results["machine"]
    plan = results["plan"]
    tokens = results["prompt_tokens"]
    parts = [
        "# aigw benchmark results",
        "",
        f"Made by `{results['command']}` on {results['when']} "
        f"({'quick run' if results['quick'] else 'full run'}, {results['seconds']} s). "
        "Method and how to read this: [README.md](README.md). Raw figures: `results.json`.",
        "",
    ]
    if chart:
        parts += [f"![results]({chart})", ""]
    parts += ["## Summary", ""]
    rows = []
    for n in names:
        if n not in heads:
            reason = (targets[n].get("reason") or "").splitlines()[0][:120]
            rows.append([targets[n]["label"], f"not available: {reason}"] + [""] * 8)
            continue
        h = heads[n]
        rows.append(
            [
                targets[n]["label"]
                + (
                    f" {targets[n]['info'].get('version')}"
                    if targets[n]["info"].get("version")
                    else ""
                ),
                _fmt(h["json_rps"], 0),
                _fmt(h["stream_rps"], 0),
                _fmt(h["cpu_ms"], 3)
                + (
                    f" (+{_fmt(h['db_cpu_ms'], 3)} PostgreSQL)"
                    if h.get("db_cpu_ms") is not None
                    else ""
                ),
                _fmt(h["stream_cpu_ms"], 3),
                "—"
                if n == "direct"
                else f"+{_fmt(h['added_p50_ms'], 3)} / +{_fmt(h['added_p99_ms'], 3)}",
                "—" if n == "direct" else f"+{_fmt(h['added_ttfb_ms'], 3)}",
                f"{_fmt(h['cpu_us_per_chunk'], 1)} / {_fmt(h['cpu_us_per_chunk_burst'], 1)}",
                "—" if n == "direct" else _fmt(h["rss_idle_mb"], 0),
                "—"
                if n == "direct"
                else f"+{_fmt(h['rss_extra_mb'], 0)} / {_fmt(h['rss_growth_mb'], 1)}",
            ]
        )
    parts.append(
        _table(
            [
                "target (1 worker, 1 core)",
                "non-stream req/s",
                "20-chunk streams/s",
                "CPU ms / request",
                "CPU ms / stream",
                "added p50 / p99 ms (c=1)",
                "added TTFB ms",
                "CPU µs / chunk paced / burst",
                "idle RSS MB",
                "1,000 streams: extra / growth MB",
            ],
            rows,
        )
    )
    parts += [
        "",
        f"req/s and streams/s: the best of concurrency {', '.join(map(str, plan['levels']))} with the "
        f"short prompt ({tokens['short']} tokens); CPU per request and per stream: at c=10 (or the "
        "nearest level measured). Added p50: median over interleaved rounds of (target - direct) "
        "in the same round; added p99: p99 of all the target's c=1 samples - p99 of all direct's. "
        "1,000 streams: extra = peak RSS - RSS before the first wave; growth = RSS after the last "
        "wave - after the first.",
        "",
    ]
    rr = ratios(results)
    if rr:
        parts += ["## Ratios", ""]
        parts += [f"- **{num}/{den}**: {text}" for num, den, text in rr]
        parts.append("")
    parts += ["## Targets (issues #4 and #15): met and missed", ""]
    parts.append(
        _table(
            ["target", "status", "measured"],
            [[c["target"], c["status"], c["detail"]] for c in checks(results)],
        )
    )
    parts.append("")

    # throughput detail
    parts += [
        "## Throughput by concurrency",
        "",
        f"Prompts: short = {tokens['short']} tokens, long = {tokens['long']} tokens (o200k_base, "
        "as billed). Cells: req/s · CPU ms per request · p50 ms. Gateway core busy "
        "and load core busy are in `results.json`.",
        "",
    ]
    levels = plan["levels"]
    rows = []
    for n in live:
        table = throughput_table(targets[n])
        for mode in ("json", "stream"):
            for prompt in plan["prompts"]:
                cells = []
                for c in levels:
                    v = table.get((mode, prompt, c))
                    if not v or v["rps"] is None:
                        cells.append("—")
                        continue
                    err = f" · {v['errors']} err" if v["errors"] else ""
                    cells.append(
                        f"{_fmt(v['rps'], 0)} · {_fmt(v['cpu_ms'], 3)} · {_fmt(v['p50_ms'], 2)}{err}"
                    )
                rows.append([n, "stream" if mode == "stream" else "non-stream", prompt, *cells])
    parts.append(_table(["target", "mode", "prompt", *[f"c={c}" for c in levels]], rows))
    parts.append("")

    # latency
    parts += ["## Latency at c=1 (interleaved rounds)", ""]
    rows = []
    for n in live:
        for prompt, summary in (targets[n].get("latency") or {}).items():
            rows.append(
                [
                    n,
                    prompt,
                    _fmt(summary.get("p50_ms"), 3),
                    _fmt(summary.get("p99_ms"), 3),
                    "—" if n == "direct" else _fmt(summary.get("added_p50_ms"), 3),
                    "—" if n == "direct" else _fmt(summary.get("added_p99_ms"), 3),
                    str(len(summary.get("rounds", []))),
                ]
            )
        ttfb = (targets[n].get("ttfb") or {}).get("short")
        if ttfb:
            rows.append(
                [
                    n,
                    "stream TTFB",
                    _fmt(ttfb.get("ttfb_p50_ms"), 3),
                    _fmt(ttfb.get("ttfb_p99_ms"), 3),
                    "—" if n == "direct" else _fmt(ttfb.get("added_ttfb_p50_ms"), 3),
                    "—" if n == "direct" else _fmt(ttfb.get("added_ttfb_p99_ms"), 3),
                    str(len(ttfb.get("rounds", []))),
                ]
            )
    parts.append(
        _table(["target", "request", "p50 ms", "p99 ms", "added p50", "added p99", "rounds"], rows)
    )
    parts.append("")

    # streaming CPU
    parts += [
        "## Streaming CPU",
        "",
        f"Streams at c={plan['chunk_concurrency']} of {plan['chunks_lo']} and "
        f"{plan['chunks_hi']} chunks (as many as take about {plan['chunk_cpu_budget']:g} s of the "
        "target's CPU); CPU per chunk = the difference in CPU per stream / "
        f"{plan['chunks_hi'] - plan['chunks_lo']}. *Paced*: {plan['chunk_pace_ms']} ms between "
        "chunks, so each chunk is its own wake-up, read and write, as with a real model. *Burst*: "
        "chunks back to back, so reads coalesce and what is left is the gateway's own work per "
        "chunk (the figure the ≤ 10 µs target is checked on).",
        "",
    ]
    rows = []
    for n in live:
        chunk = targets[n].get("chunk") or {}
        paced = chunk.get("cpu_ms_per_stream_paced") or {}
        rows.append(
            [
                n,
                _fmt(chunk.get("cpu_us_per_chunk_paced"), 2),
                _fmt(chunk.get("cpu_us_per_chunk_burst"), 2),
                _fmt(paced.get(str(plan["chunks_lo"])), 3),
                _fmt(paced.get(str(plan["chunks_hi"])), 3),
            ]
        )
    parts.append(
        _table(
            [
                "target",
                "CPU µs / chunk, paced",
                "CPU µs / chunk, burst",
                f"CPU ms / paced {plan['chunks_lo']}-chunk stream",
                f"CPU ms / paced {plan['chunks_hi']}-chunk stream",
            ],
            rows,
        )
    )
    parts.append("")

    # memory
    parts += [
        "## Memory: 1,000 concurrent slow streams",
        "",
        f"{plan['slow_waves']} wave(s) of {plan['slow_streams']} streams ({plan['slow_chunks']} chunks, "
        f"{plan['slow_delay_ms']} ms apart), RSS of the server process tree sampled every 0.2 s.",
        "",
    ]
    rows = []
    for n in live:
        slow = targets[n].get("slow") or {}
        for w in slow.get("waves", []):
            rows.append(
                [
                    n,
                    str(w["wave"]),
                    _fmt(targets[n].get("rss_idle_mb"), 1),
                    _fmt(slow.get("before_rss_mb"), 1),
                    f"{w['completed']}/{w['completed'] + w['failed']}",
                    str(w["peak_concurrent"]),
                    _fmt(w["peak_rss_mb"], 1),
                    _fmt(w["after_rss_mb"], 1),
                    _fmt(w["wall_s"], 1),
                ]
            )
    parts.append(
        _table(
            [
                "target",
                "wave",
                "idle MB",
                "before MB",
                "completed",
                "peak concurrent",
                "peak RSS MB",
                "after MB",
                "wall s",
            ],
            rows,
        )
    )
    parts.append("")

    # search
    search = (targets.get("aigw") or {}).get("search") or {}
    parts += ["## Admin search (`GET /apikeys`, c=1)", ""]
    if search.get("queries"):
        seed = search.get("seed", {})
        parts.append(
            f"{_fmt(seed.get('keys'), 0)} keys seeded by COPY in {seed.get('seconds')} s; "
            f"{search['requests']} timed requests; overall p50 {_fmt(search['p50_ms'], 2)} ms, "
            f"p95 {_fmt(search['p95_ms'], 2)} ms."
        )
        parts.append("")
        parts.append(
            _table(
                [
                    "query",
                    "total",
                    "p50 ms",
                    "p95 ms",
                    "max ms",
                    "CPU ms / request: aigw + PostgreSQL",
                ],
                [
                    [
                        q["query"],
                        _fmt(q["total"], 0) if q["total"] is not None else "—",
                        _fmt(q["p50_ms"], 2),
                        _fmt(q["p95_ms"], 2),
                        _fmt(q["max_ms"], 2),
                        f"{_fmt(q.get('aigw_cpu_ms'), 2)} + {_fmt(q.get('db_cpu_ms'), 2)}",
                    ]
                    for q in search["queries"]
                ],
            )
        )
    else:
        parts.append(f"Not measured: {search.get('skipped') or 'aigw not available'}.")
    parts.append("")
    parts += _workers_section(results.get("workers") or {})

    # validity
    big = (targets.get("aigw") or {}).get("big_prompt") or {}
    if big.get("cases"):
        parts += ["## A 100k-token prompt: time to first byte", ""]
        parts.append(
            f"{big['tokens']:,} tokens ({big['bytes']:,} bytes of body), streamed at c=1; "
            f"tiktoken's own `encode_ordinary` of the text takes {big['encode_ms']:.1f} ms on the "
            "gateway core (median of 7). Added = TTFB - direct's TTFB for the same body. "
            f"Keys: input_limit {big['bound_limit']:,} (at least the body's bytes, so a byte "
            f"bound proves the prompt within it) and {big['count_limit']:,} (under the byte "
            "count: only an exact count admits it)."
        )
        parts.append("")
        rows = []
        for name, row in big["cases"].items():
            rows.append(
                [
                    name,
                    f"{row['ttfb_p50_ms']:.2f}",
                    "—" if "added_ms" not in row else f"{row['added_ms']:+.2f}",
                    "—" if "added_vs_encode" not in row else f"{row['added_vs_encode']:.2f}x",
                    str(row["samples"]),
                ]
            )
        parts.append(_table(["case", "TTFB p50 ms", "added ms", "added / encode", "n"], rows))
        parts.append("")
        if big.get("cold_ttfb_ms") is not None:
            parts.append(
                f"The first large body's TTFB, which starts the counting worker process "
                f"(spawn, imports, the encoding's load): {big['cold_ttfb_ms']:.1f} ms."
            )
            parts.append("")
    parts += budget.markdown(targets.get("aigw"))
    parts += ["## Validity notes", ""]
    busy = results.get("cpu_busy_during_run", {})
    steal = results.get("cpu_steal_during_run", {})
    parts.append(
        f"- Pinning: gateways on CPU {results['pinning']['gateway_cpu']}, load generator "
        f"({results['loadgen']}), fake upstream and harness on CPU {results['pinning']['load_cpu']}."
        + (
            f" Everything the harness started ran at nice {results['nice']}, so other tenants of "
            "the machine interfered less."
            if results.get("nice")
            else ""
        )
    )
    before = results.get("cpu_busy_before_start") or {}
    if before:
        parts.append(
            "- Other load before the run started (1 s sample): "
            + ", ".join(f"CPU {k}: {v:.0%}" for k, v in before.items())
            + "."
        )
    others = [
        v["gateway_core_other"]
        for n in live
        for v in throughput_table(targets[n]).values()
        if v.get("gateway_core_other") is not None
    ]
    if others:
        parts.append(
            "- Share of the gateway core used by other processes during throughput runs: "
            f"median {statistics.median(others):.0%}, max {max(others):.0%}."
        )
    parts.append(
        "- CPU busy over the whole run: "
        + ", ".join(f"CPU {k}: {v:.0%}" for k, v in busy.items())
        + "; stolen by the hypervisor: "
        + ", ".join(f"CPU {k}: {v:.1%}" for k, v in steal.items())
        + "."
    )
    rows_all = [
        (n, key, v)
        for n in live
        for key, v in throughput_table(targets[n]).items()
        if n != "direct"
    ]
    hot = [(n, key, v) for n, key, v in rows_all if (v.get("load_core_busy") or 0) > 0.9]
    ours = [
        f"{n} {m}/{p}/c={c}" for n, (m, p, c), v in hot if (v.get("load_side_share") or 0) > 0.7
    ]
    unknown = all(v.get("load_side_share") is None for _n, _k, v in hot)
    if hot and unknown:
        parts.append(
            f"- The load core was over 90 % busy in {len(hot)} of {len(rows_all)} gateway runs "
            "(this run did not record how much of that was our own load side)."
        )
    elif not hot:
        parts.append(
            "- The load core never passed 90 % busy: the load side was not the bottleneck."
        )
    else:
        parts.append(
            f"- The load core was over 90 % busy in {len(hot)} of {len(rows_all)} gateway runs"
            + (
                "; our own load side (wrk + fake upstream + harness) used over 70 % of it in: "
                + ", ".join(ours)
                + " — there the gateway may not have been the bottleneck."
                if ours
                else "; our own load side never used more than 70 % of it, the rest was other "
                "tenants of the machine (which slows the load as well: req/s are lower bounds)."
            )
        )
    parts.append(
        "- direct is load-bound by design: one wrk core cannot saturate the fake upstream, so its "
        "req/s is a floor on what the upstream does."
    )
    warm = (results.get("plan") or {}).get("warmup_s")
    if "access_log" not in results:
        parts.append(
            "- This run predates issue 15's rules: access logs differed per target, the "
            f"warm-up was {warm} s, saturated cells were kept, and it did not refuse a dirty tree."
        )
    else:
        parts += _fairness_notes(results, live, targets, warm)
    errs = [f"{n}: {e}" for n in names for e in targets[n].get("errors", [])]
    if errs:
        parts.append("- Errors: " + "; ".join(errs))
    parts.append("")

    # machine
    parts += ["## Machine and versions", ""]
    parts.append(
        f"- CPU: {m['cpu_model']}, {m['cpus']} CPUs ({m['hypervisor']} guest), {m['memory_gib']} GiB"
    )
    parts.append(
        f"- OS: {m['os']}, kernel {m['kernel']}; load average at the end {m['load_average']}"
    )
    parts.append(
        f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    )
    parts.append(f"- aigw {m['aigw']}; LiteLLM {m['litellm']}; {m['wrk']}; {m['postgresql']}")
    for n in live:
        info = targets[n].get("info") or {}
        if info:
            parts.append(f"- {n}: " + "; ".join(f"{k}: {v}" for k, v in info.items()))
    parts.append(f"- Command: `{results['command']}`")
    parts.append("")
    return "\n".join(parts)


# --- chart --------------------------------------------------------------------


def _fairness_notes(results: dict, live: list[str], targets: dict, warm: object) -> list[str]:
    """Validity lines for the rules of issue 15 (a run made under them)."""
    parts: list[str] = []
    parts.append(
        f"- Access logs: {results.get('access_log', 'not recorded')}. Warm-up: every target "
        f"served a mix of requests for {warm} s before the first measurement."
    )
    discarded = [
        f"{n} {r['mode']}/{r['prompt']}/c={r['c']}"
        for n in live
        for r in targets[n].get("throughput") or []
        if r.get("discarded")
    ]
    parts.append(
        f"- {len(discarded)} throughput cell(s) discarded and measured again because the load "
        "core was over 90 % busy (kept in results.json, marked `discarded`)"
        + (": " + ", ".join(discarded) if discarded else "")
        + "."
    )
    return parts


def _matplotlib():
    """matplotlib for the chart only: from this venv, else installed into benchmarks/.work."""
    try:
        import matplotlib
    except ImportError:
        target = WORK / "pylib"
        if str(target) not in sys.path:
            sys.path.insert(0, str(target))
        try:
            import matplotlib
        except ImportError:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--target",
                    str(target),
                    "matplotlib",
                ],
                check=True,
                timeout=600,
            )
            import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _headroom(ax) -> None:
    """Room above the tallest bar of a log axis for its label."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 6)


def chart(results: dict, path: Path) -> bool:
    try:
        plt = _matplotlib()
    except Exception as exc:
        print(f"no chart: matplotlib unavailable ({exc})")
        return False
    targets = results["targets"]
    live = [n for n in ORDER if n in targets and targets[n].get("available")]
    heads = {n: headline(targets[n]) for n in live}
    levels = results["plan"]["levels"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9), layout="constrained")
    fig.suptitle(
        "aigw benchmark — one core per gateway, same fake upstream"
        + (" (quick run)" if results["quick"] else ""),
        fontsize=14,
    )

    def bars_by_level(ax, mode: str, title: str) -> None:
        width = 0.8 / max(1, len(live))
        drawn = False
        for i, n in enumerate(live):
            table = throughput_table(targets[n])
            values = [((table.get((mode, "short", c)) or {}).get("rps") or 0) for c in levels]
            xs = [j + i * width for j in range(len(levels))]
            ax.bar(xs, values, width, label=n, color=COLORS.get(n))
            drawn = drawn or any(values)
            for x, v in zip(xs, values, strict=True):
                if v:
                    ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks([j + width * (len(live) - 1) / 2 for j in range(len(levels))])
        ax.set_xticklabels([f"c={c}" for c in levels])
        if drawn:
            ax.set_yscale("log")
            _headroom(ax)
        ax.set_title(title)
        ax.legend(fontsize=8, loc="upper right")

    def bars(ax, key: str, title: str, unit: str, names: list[str], log: bool = True) -> None:
        values = [heads[n].get(key) for n in names]
        shown = [v if v is not None and v > 0 else 0 for v in values]
        ax.bar(names, shown, color=[COLORS.get(n) for n in names])
        for x, v in enumerate(values):
            if v is not None:
                ax.text(x, max(v, 1e-9), f"{v:,.3g} {unit}", ha="center", va="bottom", fontsize=8)
        if log and any(shown):
            ax.set_yscale("log")
            _headroom(ax)
        ax.set_title(title)

    bars_by_level(axes[0][0], "json", "non-stream req/s (short prompt)")
    bars_by_level(axes[0][1], "stream", "20-chunk streams/s (short prompt)")
    bars(axes[0][2], "cpu_ms", "CPU ms per non-stream request (c=10)", "ms", live)
    gateways = [n for n in live if n != "direct"]
    ax = axes[1][0]
    width = 0.4
    floor = 0.01  # log scale: what is measured at or below zero is drawn at the floor
    for offset, key, label in (
        (-width / 2, "added_p50_ms", "p50"),
        (width / 2, "added_p99_ms", "p99"),
    ):
        values = [heads[n].get(key) for n in gateways]
        xs = [i + offset for i in range(len(gateways))]
        ax.bar(xs, [max(v or 0, floor) for v in values], width, label=f"added {label}")
        for x, v in zip(xs, values, strict=True):
            text = "—" if v is None else f"{v:.2f}"
            ax.text(x, max(v or 0, floor), text, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(gateways)))
    ax.set_xticklabels(gateways)
    ax.set_yscale("log")
    _headroom(ax)
    ax.set_title("added latency vs direct at c=1 (ms)")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    idle = [heads[n].get("rss_idle_mb") or 0 for n in gateways]
    peaks = []
    for n in gateways:
        waves = (targets[n].get("slow") or {}).get("waves") or []
        peaks.append(max((w["peak_rss_mb"] for w in waves), default=None))
    xs = range(len(gateways))
    ax.bar([x - width / 2 for x in xs], idle, width, label="idle", color="#4c78a8")
    ax.bar(
        [x + width / 2 for x in xs],
        [p or 0 for p in peaks],
        width,
        label="peak with 1,000 slow streams",
        color="#f58518",
    )
    for x, a, p in zip(xs, idle, peaks, strict=True):
        ax.text(x - width / 2, a, f"{a:.0f}", ha="center", va="bottom", fontsize=8)
        label = "not measured" if p is None else f"{p:.0f}"
        ax.text(x + width / 2, p or 0, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(gateways)
    ax.set_ylim(0, max([*idle, *[p or 0 for p in peaks], 1]) * 1.15)
    ax.set_title("RSS (MB)")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1][2]
    search = (targets.get("aigw") or {}).get("search") or {}
    if search.get("queries"):
        labels = [q["query"].split(" (")[0] for q in search["queries"]]
        ax.barh(labels, [q["p95_ms"] for q in search["queries"]], color="#2ca02c", label="p95")
        ax.barh(labels, [q["p50_ms"] for q in search["queries"]], color="#98df8a", label="p50")
        ax.axvline(20, color="red", linestyle="--", linewidth=1, label="target p95 20 ms")
        ax.set_title(f"aigw admin search over {search.get('seed', {}).get('keys', 0):,} keys (ms)")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=8)
    else:
        bars(ax, "cpu_us_per_chunk", "CPU µs per relayed chunk", "µs", live, log=False)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    png = out / "results.png"
    made = chart(results, png)
    md = out / "RESULTS.md"
    md.write_text(markdown(results, png.name if made else None))
    return [md, json_path, *([png] if made else [])]


def main(argv: list[str] | None = None) -> int:
    """Redraw RESULTS.md and results.png from a results.json: ``python -m benchmarks.report``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    parser.add_argument(
        "results", type=Path, nargs="?", default=Path(__file__).with_name("results.json")
    )
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    for path in write(results, args.results.parent):
        print(f"wrote {path}")
    print(summary_text(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

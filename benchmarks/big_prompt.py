"""A ~100k-token prompt: what admission adds to the time to first byte (issue 15).

In one run, on the same machine and the same upstream:

- tiktoken's own ``encode_ordinary`` of the prompt's text, in this process
  moved onto the gateway core (the yardstick of the target);
- the direct upstream's TTFB for the body, and aigw's for two keys:
  *counted*, whose input limit (1.2x the count) is under the body's UTF-8
  byte length, so only an exact count can admit it; and *bound*, whose limit
  is at or above the size bound (3 tokens a byte + 16), so the bytes alone
  prove it within and the exact count runs after the answer starts;
- the first large body's TTFB (``cold``): the counting worker process is
  started by it (aigw.proxy.counting.offload), so it carries the spawn, the
  imports and the encoding's load.

"added" is aigw's TTFB p50 minus the direct one, and ``added / encode`` the
ratio of the targets: <= 1.1 counted, ~0 (<= 0.1) bound. The streams of a
case are sent back to back, one at a time, so each body's work after its
answer (the bound case's count for the record) is there when the next arrives.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from benchmarks import load
from benchmarks.load import Call, Response
from benchmarks.reference import load_o200k
from benchmarks.targets import Aigw, Target
from benchmarks.workload import big, body, prompt_tokens


def _call_as(target: Target, token: str, raw_body: bytes) -> Call:
    headers = (("Content-Type", "application/json"), ("Authorization", f"Bearer {token}"))
    return Call("127.0.0.1", target.port, target.path, headers, raw_body)


def _streamed(response: Response) -> bool:
    return response.status == 200 and b"[DONE]" in response.body


def encode_seconds(bench: Any, messages: list[dict], times: int = 7) -> float:
    """Median wall time of o200k_base ``encode_ordinary`` over the message contents,
    run by the harness moved onto the gateway core for the measurement."""
    encoding = load_o200k()
    texts = [m["content"] for m in messages]
    encoding.encode_ordinary(texts[0][:1000])
    if bench.gateway_cpu is not None:
        os.sched_setaffinity(0, {bench.gateway_cpu})
    try:
        samples = []
        for _ in range(times):
            t0 = time.perf_counter()
            for text in texts:
                encoding.encode_ordinary(text)
            samples.append(time.perf_counter() - t0)
    finally:
        if bench.load_cpu is not None:
            os.sched_setaffinity(0, {bench.load_cpu})
    return statistics.median(samples)


def _first(bench: Any, call: Call) -> Response:
    """The first answer of *call*, once its key reached the gateway's cache."""
    deadline = time.monotonic() + 10
    while True:
        first: Response = bench.aio(load.sequential(call, 1, sse=True))[0]
        if first.status != 401 or time.monotonic() > deadline:
            return first
        time.sleep(0.2)


def measure(bench: Any, aigw: Aigw, direct: Target, invalid: type[Exception]) -> dict:
    """The phase (see the module docstring); *invalid* is raised on a count mismatch."""
    plan = bench.plan
    messages = big(plan.big_tokens)
    tokens = prompt_tokens(messages)
    raw = body(messages, stream=True)
    bound_limit = max(3 * len(raw) + 16, 1_000_000)
    count_limit = int(tokens * 1.2)
    assert count_limit < len(raw), "the counted case needs a limit under the byte count"
    cases = {
        "direct": direct.call(raw),
        "aigw, limit >= bytes (bound)": _call_as(
            aigw, aigw.create_key("bench-big-bound", bound_limit), raw
        ),
        "aigw, limit < bytes (counted)": _call_as(
            aigw, aigw.create_key("bench-big-count", count_limit), raw
        ),
    }
    cold = None
    for name, call in cases.items():
        first = _first(bench, call)
        if not _streamed(first):
            raise RuntimeError(f"{name}: {first.status} {first.body[:300]!r}")
        if name != "direct" and cold is None:  # no large body reached aigw before
            cold = first.ttfb * 1000
        counted = first.header("x-aigw-input-tokens")
        if "counted" in name and counted != str(tokens):
            raise invalid(
                f"aigw counted {counted} input tokens for the big prompt, the harness {tokens}"
            )
    encode_s = encode_seconds(bench, messages)
    print(
        f"big prompt: {tokens:,} tokens, {len(raw):,} bytes; tiktoken encode "
        f"{encode_s * 1000:.1f} ms on the gateway core; {plan.big_rounds} rounds x "
        f"{plan.big_per_round} streams"
    )
    ttfb: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(plan.big_rounds):
        names = list(cases)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            bench.settle(direct if name == "direct" else aigw)
            responses = bench.aio(load.sequential(cases[name], plan.big_per_round, sse=True))
            if not all(_streamed(x) for x in responses):
                raise RuntimeError(f"{name}: a bad response in round {r}")
            ttfb[name] += [x.ttfb * 1000 for x in responses]
    base = statistics.median(ttfb["direct"])
    out: dict = {
        "tokens": tokens,
        "bytes": len(raw),
        "encode_ms": encode_s * 1000,
        "bound_limit": bound_limit,
        "count_limit": count_limit,
        "cold_ttfb_ms": cold,
        "cases": {},
    }
    for name, values in ttfb.items():
        p50 = statistics.median(values)
        row = {"ttfb_p50_ms": p50, "samples": len(values)}
        if name != "direct":
            row["added_ms"] = p50 - base
            row["added_vs_encode"] = (p50 - base) / (encode_s * 1000)
        out["cases"][name] = row
        print(
            f"  {name:32} TTFB p50 {p50:8.2f} ms"
            + (
                f"  added {row['added_ms']:+8.2f} ms = {row['added_vs_encode']:.2f}x encode"
                if name != "direct"
                else ""
            )
        )
    if cold is not None:
        print(
            f"  first large body (starts the counting worker): TTFB {cold:.1f} ms "
            f"= {cold / (encode_s * 1000):.1f}x encode"
        )
    return out

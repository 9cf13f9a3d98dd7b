"""CPU per relayed chunk of the gateway's stream relay, against a bare relay, in one run.

``python -m benchmarks.relay_chunks [--streams 400] [--repeat 5]`` from the repository root.

Both relays run in this process on the same fake upstream response (an object
whose ``content.readany`` hands out prepared bytes) and a no-op client
``send``, so what is measured is each relay's own work, without sockets:

* **bare**: read → send, what a passthrough proxy does (``benchmarks/reference.py``);
* **aigw**: :meth:`aigw.proxy.relay.Relay.stream` (SSE decoding, parsing each
  chunk, per-choice accounting, usage stripping) with a ``reject`` key whose
  output limit is far away (``--limit``, default 4096), and once more near it
  (a limit that the stream passes, so it is cut).

CPU per chunk = (CPU per ``hi``-chunk stream - CPU per ``lo``-chunk stream) /
(hi - lo), the median over ``--repeat`` rounds, with chunks read one event at a
time (*paced*: each chunk its own read, as a model's token stream arrives) and
in 16 KiB reads (*burst*). Ratios are aigw / bare of the same round. The
socket and HTTP work a real deployment adds is the same for both relays, so a
full-stack ratio is smaller than the in-process one (``make bench`` measures
that).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson

WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog")


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_bytes(chunks: int) -> list[bytes]:
    """An OpenAI-style stream of *chunks* one-word content deltas, as events."""
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_bench",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**base, "choices": [choice], "usage": None})

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": WORDS[i % len(WORDS)]}) for i in range(chunks)]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": chunks + 9}
    events.append(_event({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


class _Content:
    __slots__ = ("_parts",)

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = iter(parts)

    async def readany(self) -> bytes:
        return next(self._parts, b"")


class _Response:
    __slots__ = ("content",)

    def __init__(self, parts: list[bytes]) -> None:
        self.content = _Content(parts)


def reads(events: list[bytes], burst: bool) -> list[bytes]:
    if not burst:
        return events
    data = b"".join(events)
    return [data[i : i + 16384] for i in range(0, len(data), 16384)]


async def _send(message: Any) -> None:
    return None


async def bare(parts: list[bytes]) -> None:
    response = _Response(parts)
    await _send({"type": "http.response.start", "status": 200, "headers": []})
    while data := await response.content.readany():
        await _send({"type": "http.response.body", "body": data, "more_body": True})
    await _send({"type": "http.response.body", "body": b"", "more_body": False})


class AigwRelay:
    """Builds what :class:`Relay` needs once; one relay per stream, as the pipeline does."""

    def __init__(self, limit: int) -> None:
        from aigw.config import Settings
        from aigw.proxy import counting
        from aigw.proxy.adapters.openai import OpenAIAdapter
        from aigw.proxy.admission import Admitted
        from aigw.proxy.policy import Decision, Limits

        self.settings = Settings.model_construct(
            upstream_total_timeout=600.0,
            upstream_first_byte_timeout=60.0,
            upstream_idle_timeout=60.0,
        )
        self.encoding = counting.Encoders.load().get("o200k_base")
        self.adapter = OpenAIAdapter()
        self.limits = Limits(input_limit=0, output_limit=limit, usage_limit="reject")
        self.admitted = Admitted(
            body={"model": "gpt-4o-mini"},
            upstream_body=b"{}",
            stream=True,
            client_wants_usage=False,
            decision=Decision(cut_output_at=limit),
            injected_max=False,
            response_headers=[],
        )

    async def __call__(self, parts: list[bytes]) -> None:
        import uuid

        from aigw.proxy.relay import Downstream, Output, Relay
        from aigw.proxy.upstream import UpstreamClock
        from aigw.usage.recorder import UsageEntry

        entry = UsageEntry(
            request_id="bench",
            api_key_id=uuid.UUID(int=0),
            alias="bench",
            provider="bench",
            model="gpt-4o-mini",
            outcome="rejected",
            status_code=500,
            input_limit=0,
            output_limit=self.limits.output_limit,
            usage_limit="reject",
        )
        output = Output(self.encoding, self.admitted.decision.cut_output_at)
        relay = Relay(
            self.adapter,
            self.admitted,
            self.limits,
            entry,
            Downstream(_send),
            UpstreamClock(self.settings),
            output,
        )
        await relay.stream(_Response(parts))  # type: ignore[arg-type]
        relay._finished()


async def cpu_per_stream(relay: Any, parts: list[bytes], streams: int) -> float:
    started = time.process_time()
    for _ in range(streams):
        await relay(list(parts))
    return (time.process_time() - started) / streams


async def measure(args: argparse.Namespace) -> None:
    lo, hi = args.lo, args.hi
    relays = {
        "bare": bare,
        f"aigw (limit {args.limit}, far)": AigwRelay(args.limit),
        f"aigw (limit {args.near}, cut)": AigwRelay(args.near),
    }
    for burst in (False, True):
        style = "burst" if burst else "paced"
        events = {n: reads(stream_bytes(n), burst) for n in (lo, hi)}
        rounds: dict[str, list[float]] = {name: [] for name in relays}
        for _ in range(args.repeat):
            for name, relay in relays.items():
                await cpu_per_stream(relay, events[lo], 20)  # warm
                cost_hi = await cpu_per_stream(relay, events[hi], args.streams)
                cost_lo = await cpu_per_stream(relay, events[lo], args.streams)
                rounds[name].append((cost_hi - cost_lo) / (hi - lo) * 1e6)
        base = rounds["bare"]
        print(f"{style}: CPU µs per relayed chunk (median of {args.repeat}; ratio to bare)")
        for name, values in rounds.items():
            ratios = [v / b for v, b in zip(values, base, strict=True) if b > 0]
            print(
                f"  {name:26} {statistics.median(values):7.2f} µs"
                f"   x{statistics.median(ratios):5.1f}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--lo", type=int, default=20)
    parser.add_argument("--hi", type=int, default=120)
    parser.add_argument("--limit", type=int, default=4096, help="an output limit never reached")
    parser.add_argument("--near", type=int, default=100, help="an output limit the stream passes")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(measure(args))
    else:
        uvloop.run(measure(args))


if __name__ == "__main__":
    main()

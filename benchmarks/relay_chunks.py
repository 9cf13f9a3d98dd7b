"""CPU per relayed chunk of the gateway's stream relay, against a bare relay, in one run.

``python -m benchmarks.relay_chunks [--streams 200] [--repeat 5]`` from the repository root.

Both relays run in this process, each between two real socket pairs: a
writer task plays the upstream (one write per event, yielding to the loop
between them: *paced*; or all events in one write: *burst*), the relay reads
its side with ``read(65536)`` (as aiohttp's ``readany``), and its ASGI
``send`` writes to the client socket, drained by a reader task. Both pay the
same socket work; what differs is each relay's own:

* **bare**: read, send; what a passthrough proxy does (``benchmarks/reference.py``);
* **aigw**: :meth:`aigw.proxy.relay.Relay.stream` (SSE decoding, parsing each
  chunk, per-choice accounting, usage stripping) for a ``reject`` key whose
  output limit is far away (``--limit``), and once more near it (``--near``: a
  limit the stream passes, so it is cut there and ends early).

CPU per chunk = (CPU per ``hi``-chunk stream - CPU per ``lo``-chunk stream) /
(hi - lo), the median over ``--repeat`` rounds; ratios are aigw / bare of the
same round. Uvicorn's HTTP framing and aiohttp's parsing, which a deployment
adds to both, are not included (``make bench`` measures the whole stack).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
import uuid
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
    __slots__ = ("_reader",)

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def readany(self) -> bytes:
        return await self._reader.read(65536)


class _Response:
    __slots__ = ("content",)

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.content = _Content(reader)


class Exchange:
    """One stream's sockets: the upstream's writer, the relay's two ends, the client's drain."""

    def __init__(self, events: list[bytes], burst: bool) -> None:
        self.events = events
        self.burst = burst

    async def __aenter__(self) -> Exchange:
        up_a, up_b = socket.socketpair()
        down_a, down_b = socket.socketpair()
        self.upstream, self._upstream_back = await asyncio.open_connection(sock=up_b)
        _, self._upstream_writer = await asyncio.open_connection(sock=up_a)
        _, self._client = await asyncio.open_connection(sock=down_a)
        self._client_reader, self._client_back = await asyncio.open_connection(sock=down_b)
        self._tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._drain())]
        return self

    async def _produce(self) -> None:
        writer = self._upstream_writer
        if self.burst:
            writer.write(b"".join(self.events))
        else:
            for event in self.events:
                writer.write(event)
                await writer.drain()
                await asyncio.sleep(0)
        await writer.drain()
        writer.close()

    async def _drain(self) -> None:
        while await self._client_reader.read(65536):
            pass

    async def send(self, message: Any) -> None:
        body = message.get("body")
        if body:
            self._client.write(body)
            await self._client.drain()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self._client.close()

    async def __aexit__(self, *exc: object) -> None:
        if not self._client.is_closing():
            self._client.close()
        await asyncio.gather(*self._tasks)
        self._upstream_back.close()
        self._client_back.close()


async def bare(exchange: Exchange) -> None:
    read = exchange.upstream.read
    await exchange.send({"type": "http.response.start", "status": 200, "headers": []})
    while data := await read(65536):
        await exchange.send({"type": "http.response.body", "body": data, "more_body": True})
    await exchange.send({"type": "http.response.body", "body": b"", "more_body": False})


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

    async def __call__(self, exchange: Exchange) -> None:
        from aigw.proxy.accounting import Output
        from aigw.proxy.downstream import Downstream
        from aigw.proxy.relay import Relay
        from aigw.proxy.upstream import UpstreamClock
        from aigw.usage.entry import UsageEntry

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
            Downstream(exchange.send),
            UpstreamClock(self.settings),
            output,
        )
        await relay.stream(_Response(exchange.upstream))  # type: ignore[arg-type]
        entry.output_tokens = output.tokens  # the record's count, as the pipeline takes it


async def cpu_per_stream(relay: Any, events: list[bytes], burst: bool, streams: int) -> float:
    started = time.process_time()
    for _ in range(streams):
        async with Exchange(events, burst) as exchange:
            await relay(exchange)
    return (time.process_time() - started) / streams


async def measure(args: argparse.Namespace) -> None:
    lo, hi = args.lo, args.hi
    relays = {
        "bare": bare,
        f"aigw (limit {args.limit}, far)": AigwRelay(args.limit),
        f"aigw (limit {args.near}, cut)": AigwRelay(args.near),
    }
    events = {n: stream_bytes(n) for n in (lo, hi)}
    for burst in (False, True):
        rounds: dict[str, list[float]] = {name: [] for name in relays}
        for _ in range(args.repeat):
            for name, relay in relays.items():
                await cpu_per_stream(relay, events[lo], burst, 10)  # warm
                cost_hi = await cpu_per_stream(relay, events[hi], burst, args.streams)
                cost_lo = await cpu_per_stream(relay, events[lo], burst, args.streams)
                rounds[name].append((cost_hi - cost_lo) / (hi - lo) * 1e6)
        base = rounds["bare"]
        style = "burst" if burst else "paced"
        print(f"{style}: CPU us per relayed chunk (median of {args.repeat}; ratio to bare)")
        for name, values in rounds.items():
            ratios = [v / b for v, b in zip(values, base, strict=True) if b > 0]
            ratio = f"x{statistics.median(ratios):5.2f}" if ratios else "-"
            print(f"  {name:26} {statistics.median(values):7.2f} us   {ratio}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200)
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

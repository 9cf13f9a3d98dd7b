"""A fast fake OpenAI-compatible upstream, so the gateway is what gets measured.

Raw asyncio protocol + httptools parser + uvloop, responses pre-rendered per
model: one core serves well over 10k requests/s, so it is never the bottleneck.

    python -m benchmarks.upstream --port 9000

``POST …/chat/completions`` answers a chat completion, or with
``"stream": true`` an SSE stream of 20 content chunks, a usage chunk and
``[DONE]`` (chunked transfer encoding, keep-alive). ``GET …/models`` lists
models; ``GET /health`` says ok.

Per-request knobs travel inside the prompt, because every gateway forwards the
prompt unchanged (headers and extra body fields may be dropped): a message
containing ``bench:chunks=200`` makes the stream 200 content chunks long,
``bench:delay_ms=250`` waits that long before each chunk (the slow streams of
the memory test; paced chunks also arrive in separate reads, which is what the
CPU-per-chunk figure needs). Requests without ``bench:`` take the fast path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal

import httptools

try:
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover - the project venv has orjson
    import json

    loads = json.loads

CREATED = 1_700_000_000
CHUNKS = 20
WORDS = [
    " The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    " and",
    " keeps",
    " running",
    " through",
    " the",
    " green",
    " field",
    " until",
    " the",
    " sun",
    " sets",
]
KNOB = re.compile(rb"bench:(chunks|delay_ms)=(\d+)")
MAX_CHUNKS = 100_000


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(data: bytes) -> bytes:
    return _chunk(b"data: " + data + b"\n\n")


class Rendered:
    """Every response for one model, rendered once."""

    def __init__(self, model: str) -> None:
        m = model.replace("\\", "").replace('"', "").encode()
        content = "".join(WORDS).strip().encode()
        body = (
            b'{"id":"chatcmpl-bench","object":"chat.completion","created":%d,"model":"%s",'
            b'"choices":[{"index":0,"message":{"role":"assistant","content":"%s"},'
            b'"logprobs":null,"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":%%d,"completion_tokens":%d,"total_tokens":%%d}}'
        ) % (CREATED, m, content, CHUNKS)
        self.json_template = body
        self.json_head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        prefix = (
            b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":%d,'
            b'"model":"%s","system_fingerprint":null,"choices":[{"index":0,' % (CREATED, m)
        )
        self.first = _sse(
            prefix
            + b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
        )
        self.words = [
            _sse(
                prefix
                + b'"delta":{"content":"%s"},"logprobs":null,"finish_reason":null}]}' % w.encode()
            )
            for w in WORDS
        ]
        self.stop = _sse(prefix + b'"delta":{},"logprobs":null,"finish_reason":"stop"}]}')
        self.usage_prefix = (
            b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":%d,'
            b'"model":"%s","choices":[],"usage":' % (CREATED, m)
        )
        self.done = _sse(b"[DONE]") + b"0\r\n\r\n"
        self.fast_stream_body = self.first + b"".join(self.words) + self.stop

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return _sse(
            self.usage_prefix
            + b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}'
            % (prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
        )


class Upstream:
    def __init__(self) -> None:
        self.rendered: dict[str, Rendered] = {}
        self.models_body = (
            b'{"object":"list","data":[{"id":"gpt-4o-mini","object":"model",'
            b'"created":1700000000,"owned_by":"bench"}]}'
        )

    def for_model(self, model: str) -> Rendered:
        r = self.rendered.get(model)
        if r is None:
            if len(self.rendered) > 64:
                self.rendered.clear()
            r = self.rendered[model] = Rendered(model)
        return r


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "body",
        "keep_alive",
        "parser",
        "streaming",
        "transport",
        "upstream",
        "url",
    )

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.streaming: asyncio.Task[None] | None = None
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            self.chat(b"".join(self.body))
        elif method == b"GET" and path.endswith(b"/models"):
            self.respond(b"200 OK", self.upstream.models_body)
        elif method == b"GET" and path in (b"/health", b"/healthz"):
            self.respond(b"200 OK", b'{"status":"ok"}')
        else:
            self.respond(b"404 Not Found", b'{"error":{"message":"not found","type":"bench"}}')

    # responses
    def respond(self, status: bytes, body: bytes) -> None:
        t = self.transport
        if t is None:
            return
        t.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )
        if not self.keep_alive:
            t.close()

    def chat(self, raw: bytes) -> None:
        try:
            request = loads(raw)
            model = str(request.get("model") or "gpt-4o-mini")
            stream = bool(request.get("stream"))
        except Exception:
            self.respond(b"400 Bad Request", b'{"error":{"message":"bad json","type":"bench"}}')
            return
        r = self.upstream.for_model(model)
        # A rough prompt size for the usage fields; gateways count for themselves.
        prompt_tokens = max(1, len(raw) // 4)
        t = self.transport
        if t is None:
            return
        knobs = dict(KNOB.findall(raw)) if b"bench:" in raw else None
        if not stream:
            body = r.json_template % (prompt_tokens, prompt_tokens + CHUNKS)
            t.write(r.json_head + b"%d\r\n\r\n" % len(body) + body)
            if not self.keep_alive:
                t.close()
            return
        if not knobs:
            t.write(r.stream_head + r.fast_stream_body + r.usage(prompt_tokens, CHUNKS) + r.done)
            if not self.keep_alive:
                t.close()
            return
        chunks = min(int(knobs.get(b"chunks", CHUNKS)), MAX_CHUNKS)
        delay = int(knobs.get(b"delay_ms", 0)) / 1000
        self.streaming = asyncio.get_running_loop().create_task(
            self.paced(r, chunks, delay, prompt_tokens)
        )

    async def paced(self, r: Rendered, chunks: int, delay: float, prompt_tokens: int) -> None:
        try:
            t = self.transport
            if t is None:
                return
            t.write(r.stream_head)
            if delay:
                await asyncio.sleep(delay)
            t.write(r.first)
            for i in range(chunks):
                if delay:
                    await asyncio.sleep(delay)
                if self.transport is None:
                    return
                t.write(r.words[i % CHUNKS])
            if self.transport is None:
                return
            t.write(r.stop + r.usage(prompt_tokens, chunks) + r.done)
            if not self.keep_alive:
                t.close()
        finally:
            self.streaming = None


async def serve(host: str, port: int, backlog: int = 4096) -> None:
    upstream = Upstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(upstream), host, port, backlog=backlog, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))


if __name__ == "__main__":
    main()

"""A misbehaving upstream for the hostile-upstream tests: raw HTTP/1.1 over asyncio
in a background thread, so every byte it sends (a header value no HTTP library
would write, a body that never ends) is the test's choice. It imports nothing
from aigw.

Each behaviour is a path prefix: a provider whose ``base_url`` is
``{url}/{mode}/v1`` gets ``mode``'s answer to ``POST …/chat/completions``. The
key the gateway sent (``Authorization: Bearer …``) is what ``echo_*`` modes
quote back. :attr:`HostileUpstream.hits` counts requests per path,
:attr:`closed` the connections the gateway closed while a ``firehose`` stream
was still being written.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

IAM_SECRET = "AKIA-FAKE-IAM-SECRET-0123456789"

Handler = Callable[["Exchange"], Awaitable[None]]


class Exchange:
    def __init__(
        self, path: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.writer = writer

    @property
    def key(self) -> str:
        return self.headers.get("authorization", "").removeprefix("Bearer ")

    async def answer(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
        content_type: bytes = b"application/json",
    ) -> None:
        head = [b"HTTP/1.1 %d X" % status, b"content-type: " + content_type]
        head += [name + b": " + value for name, value in headers]
        head.append(b"content-length: %d" % len(body))
        self.writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await self.writer.drain()

    async def start_chunked(self, content_type: bytes) -> None:
        self.writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()

    async def end_chunks(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


def completion(content: str = "ok", usage: Any = None) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage or {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    )


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def typed_sse(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def delta(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        **extra,
    }


class HostileUpstream:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.hits: collections.Counter[str] = collections.Counter()
        self.closed = 0
        self.open_streams = 0
        self.url = ""
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.modes: dict[str, Handler] = {
            "ok": self._ok,
            "redirect": self._redirect,
            "iam": self._iam,
            "echo_key": self._echo_key,
            "echo_key_stream": self._echo_key_stream,
            "auth401": self._auth(401),
            "auth403": self._auth(403),
            "endless_body": self._endless_body,
            "endless_event": self._endless_event,
            "firehose": self._firehose,
            "firehose_text": self._firehose_text,
            "firehose_responses": self._firehose_responses,
            "firehose_anthropic": self._firehose_anthropic,
            "huge_usage": self._huge_usage,
            "error_type_object": self._error_type_object,
            "rate_limited_utf8": self._rate_limited_utf8,
        }

    def start(self) -> HostileUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        future.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def base_url(self, mode: str) -> str:
        return f"{self.url}/{mode}/v1"

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                mode = path.strip("/").split("/", 1)[0]
                self.hits[mode] += 1
                handler = self.modes.get(mode, self._ok)
                await handler(Exchange(path, headers, body, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _ok(self, ex: Exchange) -> None:
        await ex.answer(200, completion())

    async def _redirect(self, ex: Exchange) -> None:
        await ex.answer(302, b"", [(b"location", f"{self.url}/iam/credentials".encode())])

    async def _iam(self, ex: Exchange) -> None:
        await ex.answer(200, orjson.dumps({"AccessKeyId": IAM_SECRET, "choices": []}))

    async def _echo_key(self, ex: Exchange) -> None:
        key = ex.key
        escaped = key.replace("/", "\\/").replace("+", "\\u002b").replace("-", "\\u002d")
        body = (
            b'{"error":{"message":"Incorrect API key provided: '
            + escaped.encode()
            + b'","type":"invalid_request_error","param":null,"code":"invalid_api_key",'
            b'"hint":"' + key.replace("-", "%2D").encode() + b'"}}'
        )
        headers = [
            (b"x-ratelimit-limit-requests", key.encode()),
            (b"x-ratelimit-remaining-requests", b"59"),
            (b"x-echo-authorization", key.encode()),
            (b"retry-after", b"1"),
        ]
        await ex.answer(429, body, headers)

    async def _echo_key_stream(self, ex: Exchange) -> None:
        await ex.start_chunked(b"text/event-stream")
        await ex.chunk(sse(delta("Hel")))
        # The key placed to straddle a 500-character cut.
        message = "x" * 490 + " " + ex.key
        await ex.chunk(sse({"error": {"message": message, "type": "server_error"}}))
        await ex.end_chunks()

    def _auth(self, status: int) -> Handler:
        async def handler(ex: Exchange) -> None:
            body = orjson.dumps(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {ex.key}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                }
            )
            await ex.answer(status, body)

        return handler

    async def _endless_body(self, ex: Exchange) -> None:
        await ex.start_chunked(b"application/json")
        await ex.chunk(b'{"id":"x","choices":[{"index":0,"message":{"content":"')
        block = b"a" * 65536
        while True:
            await ex.chunk(block)

    async def _endless_event(self, ex: Exchange) -> None:
        await ex.start_chunked(b"text/event-stream")
        await ex.chunk(sse(delta("Hi")))
        await ex.chunk(b'data: {"choices":[{"index":0,"delta":{"content":"')
        block = b"b" * 4096
        while True:
            await ex.chunk(block)

    async def _firehose(self, ex: Exchange) -> None:
        """A stream that never ends, of events the gateway relays as they are
        (padding in a field nothing counts)."""
        await self._forever(ex, b"", sse(delta("", padding="p" * 32768)) * 4)

    async def _firehose_text(self, ex: Exchange) -> None:
        """The same with text in every chunk (what a translation to the Messages
        event stream writes on)."""
        await self._forever(ex, b"", sse(delta("a " * 4096)) * 4)

    async def _firehose_responses(self, ex: Exchange) -> None:
        """A Responses event stream that never ends (padding in ``obfuscation``)."""
        created = {
            "type": "response.created",
            "sequence_number": 0,
            "response": {"id": "resp_h", "object": "response", "status": "in_progress"},
        }
        text = {
            "type": "response.output_text.delta",
            "item_id": "msg_h",
            "output_index": 0,
            "content_index": 0,
            "delta": "",
            "obfuscation": "p" * 32768,
        }
        await self._forever(
            ex, typed_sse("response.created", created), typed_sse(text["type"], text) * 4
        )

    async def _firehose_anthropic(self, ex: Exchange) -> None:
        """An Anthropic Messages event stream that never ends."""
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_h",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4o-mini",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 0},
            },
        }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        text = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "a " * 4096},
        }
        await self._forever(
            ex,
            typed_sse("message_start", start) + typed_sse("content_block_start", block),
            typed_sse("content_block_delta", text) * 4,
        )

    async def _forever(self, ex: Exchange, first: bytes, event: bytes) -> None:
        await ex.start_chunked(b"text/event-stream")
        self.open_streams += 1
        try:
            if first:
                await ex.chunk(first)
            while True:
                await ex.chunk(event)
        except ConnectionError:
            self.closed += 1
            raise
        finally:
            self.open_streams -= 1

    async def _huge_usage(self, ex: Exchange) -> None:
        usage = {"prompt_tokens": 2**40, "completion_tokens": 2**62, "total_tokens": 2**63}
        await ex.answer(200, completion(usage=usage))

    async def _error_type_object(self, ex: Exchange) -> None:
        body = orjson.dumps({"error": {"message": "odd", "type": {"nested": [1, 2]}, "code": None}})
        await ex.answer(400, body)

    async def _rate_limited_utf8(self, ex: Exchange) -> None:
        body = orjson.dumps({"error": {"message": "slow down", "type": "rate_limit_exceeded"}})
        headers = [
            (b"retry-after", "bientôt ✓".encode()),
            (b"x-ratelimit-reset-requests", b"1s"),
        ]
        await ex.answer(429, body, headers)

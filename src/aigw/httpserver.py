"""The HTTP/1.1 protocol ``aigw serve`` runs under uvicorn: httptools, with a bound
on the request head.

uvicorn's httptools protocol puts no limit on the request line plus headers (its
h11 protocol stops at 16 KiB): before any authentication, every connection a
client opens could hold a header of any size in memory (three unfinished 64 MiB
headers grew a gateway by 196 MiB). Nor does it time out a connection that never
finishes its head (or says nothing at all), so a client could hold any number of
them open. This protocol answers 431 and closes the connection once a request
head passes :data:`MAX_HEAD_BYTES`, and 408 once a head has taken longer than
``AIGW_REQUEST_HEAD_TIMEOUT`` seconds (between requests uvicorn's keep-alive
timeout applies).

Two more bounds hold once the head is in (issue 10):

- **idle while the gateway waits on the client** — a request body with no byte
  for ``AIGW_REQUEST_BODY_TIMEOUT`` seconds, or a connection answered before its
  request's body was all in (a 401, say), which can only carry the rest of a
  body nobody reads, for as long from the answer's end: closed. uvicorn cancels
  its keep-alive timer on *any* byte received, so a client that read its 401,
  sent one more body byte and went silent was held forever; this timer re-arms
  on every body byte, and after the answer it runs from the answer's end,
  whatever arrives.
- **idle between requests** — a connection whose request was read to its end and
  answered, and that sends nothing since, is kept
  for ``AIGW_KEEPALIVE_TIMEOUT`` seconds (uvicorn's ``timeout_keep_alive``, set
  by :func:`server_options`), then closed. It must outlast the clients' own idle
  expiry: with uvicorn's default of 5 s, equal to httpx's and so the OpenAI
  SDKs', a client would now and then send its next request on a connection at
  the moment the gateway closed it, and lose that request to a reset (one
  ``ReadError`` in ~1,000 requests of the fault run under load).
- **open connections per process** — past ``AIGW_MAX_CONNECTIONS`` (by default
  half the process's file-descriptor limit), a new connection is answered 503
  and closed at once, so idle clients cannot exhaust descriptors that
  everyone else's requests, the upstream pool and the database need.
"""

from __future__ import annotations

import asyncio
import functools
import resource
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# nginx's default large_client_header_buffers is 4 x 8 KiB, Node's limit 16 KiB;
# bearer tokens and cookies from browsers fit with room to spare.
MAX_HEAD_BYTES = 64 * 1024


def _problem_response(status_line: bytes, problem: dict[str, Any]) -> bytes:
    body = orjson.dumps(problem)
    return (
        status_line + b"\r\ncontent-type: application/problem+json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


_TOO_LARGE = _problem_response(
    b"HTTP/1.1 431 Request Header Fields Too Large",
    {
        "type": "urn:aigw:problem:request_header_too_large",
        "title": "Request header fields too large",
        "status": 431,
        "code": "request_header_too_large",
        "detail": f"the request line and headers exceed {MAX_HEAD_BYTES} bytes",
    },
)
_TIMED_OUT = _problem_response(
    b"HTTP/1.1 408 Request Timeout",
    {
        "type": "urn:aigw:problem:request_timeout",
        "title": "Request head not received in time",
        "status": 408,
        "code": "request_timeout",
        "detail": "the request line and headers took too long to arrive",
    },
)


_BUSY = _problem_response(
    b"HTTP/1.1 503 Service Unavailable",
    {
        "type": "urn:aigw:problem:too_many_connections",
        "title": "Too many open connections",
        "status": 503,
        "code": "too_many_connections",
        "detail": "this gateway process holds as many connections as it allows; retry shortly",
    },
)


@functools.lru_cache(maxsize=1)
def head_timeout() -> float:
    from aigw.config import Settings

    return Settings().request_head_timeout


@functools.lru_cache(maxsize=1)
def body_timeout() -> float:
    from aigw.config import Settings

    return Settings().request_body_timeout


def _default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, soft // 2)


@functools.lru_cache(maxsize=1)
def max_connections() -> int:
    from aigw.config import Settings

    return Settings().max_connections or _default_max_connections()


def server_options(keepalive_timeout: float) -> dict[str, Any]:
    """uvicorn's options for the protocol ``aigw serve`` runs: this module's
    protocol and its keep-alive bound (``AIGW_KEEPALIVE_TIMEOUT``)."""
    return {"http": BoundedHttpToolsProtocol, "timeout_keep_alive": keepalive_timeout}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools, refusing request heads over :data:`MAX_HEAD_BYTES` (431) or slower
    than :func:`head_timeout` (408)."""

    _in_head = True  # a connection starts in the head of its first request
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None
    _body_done = True
    _last_data = 0.0
    _answered_at: float | None = None
    _idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > max_connections():
            self.transport.write(_BUSY)
            self.transport.close()
            return
        self._arm_head_timer()
        self._last_data = self.loop.time()
        self._idle_timer = self.loop.call_later(body_timeout(), self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._body_done = False
        self._answered_at = None
        if self._head_timer is None:
            self._arm_head_timer()
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._body_done = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._answered_at = self.loop.time()
        super().on_response_complete()

    def _waiting(self) -> tuple[float, float] | None:
        """Since when the gateway has been waiting on the client, and for how long it
        may (``None``: it is not, the app is working or answering)."""
        cycle = self.cycle
        answered = self._answered_at
        if cycle is None or cycle.response_complete:
            if answered is None:
                # Nothing asked yet, or a new request's head under way (the head
                # timer bounds that too).
                return self._last_data, body_timeout()
            if self._body_done:
                # Answered, the request read to its end, nothing since (a byte
                # would have begun the next request): an idle keep-alive connection.
                return answered, self.timeout_keep_alive
            # Answered before its body was all in: what may still come is the rest
            # of a body nobody reads, which does not keep the connection.
            return answered, body_timeout()
        if not self._body_done and not self.flow.read_paused:
            return self._last_data, body_timeout()
        return None

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing():
            return
        waiting = self._waiting()
        now = self.loop.time()
        if waiting is None:
            when = body_timeout()
        else:
            since, limit = waiting
            if now - since >= limit:
                self._refuse(None)
                return
            when = since + limit - now
        self._idle_timer = self.loop.call_later(max(when, 0.05), self._idle_check)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # Counted after the parser has seen the bytes: a chunk that completes the
        # head (and carries body bytes) does not count against it.
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(_TOO_LARGE)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(head_timeout(), self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(_TIMED_OUT if self._head_bytes else None)

    def _refuse(self, response: bytes | None) -> None:
        self._disarm_head_timer()
        cycle = self.cycle
        if response is not None and (cycle is None or cycle.response_complete):
            # No response of an earlier (pipelined) request is being written.
            self.transport.write(response)
        self.transport.close()

"""The upstream side of an exchange: the one shared HTTP client, opening a request,
mapping its failures, and the three time bounds.

The client is a single :class:`aiohttp.ClientSession` per process (built by
:mod:`aigw.proxy.runtime`). aiohttp was chosen over ``httpx.AsyncClient`` by
measurement: relaying a 20-event SSE stream from a local server, aiohttp used
~130-200 µs CPU per request at concurrency 1-256; httpx over the
``httpx-aiohttp`` transport 230-330 µs; plain httpx 570 µs at concurrency 1 and
2-3 ms with a p99 over 1 s at 64-256 (encode/httpx#3215). See README, "Upstream
client".

Each upstream failure has its own exception class (in :mod:`aigw.proxy.errors`),
and :func:`map_client_error` is the one place that turns aiohttp's errors into
them; :func:`read_status_error` turns an error status into one.

Time bounds (:class:`UpstreamClock`): the connect timeout is aiohttp's; the
first-byte bound runs from sending the request to the first event (streams) or
the response head (non-streams); the idle bound runs between events (SSE
comments do not reset it); the total deadline covers the whole exchange.
"""

from __future__ import annotations

import asyncio
import re
import socket
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from aigw.config import Settings
from aigw.netpolicy import UpstreamRefused, check_upstream_url
from aigw.proxy.errors import (
    ClientGone,
    UpstreamAuthFailed,
    UpstreamConnectError,
    UpstreamConnectionLost,
    UpstreamConnectTimeout,
    UpstreamDeadlineExceeded,
    UpstreamError,
    UpstreamEventTooLarge,
    UpstreamFirstByteTimeout,
    UpstreamIdleTimeout,
    UpstreamMidStreamError,
    UpstreamProtocolError,
    UpstreamRedirected,
    UpstreamRefusedAddress,
    UpstreamResponseTooLarge,
    UpstreamStatusError,
    UpstreamTimeout,
)
from aigw.proxy.redaction import quotes_secret, redact_body, redact_text
from aigw.proxy.sse import EventTooLarge, SSEDecoder, SSEEvent

# Upstream response headers relayed to the client with an upstream 4xx: an
# allow-list (a header can carry anything, the key code included), and only
# values of the shape these headers have (numbers, durations, HTTP dates).
_RELAYED_HEADERS = frozenset(
    {
        "retry-after",
        "retry-after-ms",
        "openai-processing-ms",
        *(
            f"x-ratelimit-{kind}-{unit}"
            for kind in ("limit", "remaining", "reset")
            for unit in ("requests", "tokens")
        ),
        *(
            f"anthropic-ratelimit-{unit}-{kind}"
            for kind in ("limit", "remaining", "reset")
            for unit in ("requests", "tokens", "input-tokens", "output-tokens")
        ),
    }
)
_HEADER_VALUE = re.compile(r"[A-Za-z0-9 .,:+-]{1,64}")
_MAX_ERROR_BODY = 64 * 1024
# How much of an upstream's mid-stream error message reaches the client.
_MAX_STREAM_MESSAGE = 500


def map_client_error(exc: BaseException) -> UpstreamError:
    """The one mapping from client-library errors onto :class:`UpstreamError`."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamConnectTimeout()
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return UpstreamIdleTimeout()
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, UpstreamRefused):
            return UpstreamRefusedAddress()
        return UpstreamConnectError()
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamProtocolError()
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamConnectionLost()
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return UpstreamConnectionLost()
    if isinstance(exc, aiohttp.InvalidURL):
        return UpstreamConnectError("The upstream URL is not valid")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError()
    return UpstreamError()


def _is_retryable_before_send(exc: BaseException) -> bool:
    """Failures that happen before the upstream saw the request: safe to retry once."""
    return isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc.os_error, UpstreamRefused
    )


async def post_upstream(
    session: aiohttp.ClientSession, url: URL, body: bytes, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """Send the request; one retry, and only when the upstream never saw it.

    Redirects are never followed (the target is the upstream's choice, past the
    network policy): a 3xx is :class:`UpstreamRedirected`, a 502."""
    try:
        response = await session.post(url, data=body, headers=headers, allow_redirects=False)
    except aiohttp.ClientError as exc:
        if not _is_retryable_before_send(exc):
            raise map_client_error(exc) from None
        try:
            response = await session.post(url, data=body, headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            raise map_client_error(exc) from None
    if 300 <= response.status < 400:
        response.close()
        raise UpstreamRedirected()
    return response


class UpstreamSSEDecoder(SSEDecoder):
    """The SSE decoder for an upstream stream: an event past its bound is
    :class:`UpstreamEventTooLarge` (a final error event for the client)."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        try:
            return super().feed(chunk)
        except EventTooLarge:
            raise UpstreamEventTooLarge() from None


async def read_whole(response: aiohttp.ClientResponse, clock: UpstreamClock) -> bytes:
    """A non-streamed body, read to its end; :class:`UpstreamResponseTooLarge` past
    ``AIGW_UPSTREAM_MAX_RESPONSE_BYTES`` (an endless body must not grow the gateway)."""
    limit = clock.max_response_bytes
    parts: list[bytes] = []
    size = 0
    read = response.content.readany
    while chunk := await read():
        clock.event()
        size += len(chunk)
        if size > limit:
            raise UpstreamResponseTooLarge()
        parts.append(chunk)
    return b"".join(parts)


async def read_status_error(
    response: aiohttp.ClientResponse, clock: UpstreamClock
) -> UpstreamError:
    """The error an upstream error status stands for, with (the start of) its body and
    the allowed headers. A 401/403 is the gateway's credentials failing, not the
    client's: :class:`UpstreamAuthFailed`, a 502 (its body is not read)."""
    if response.status in (401, 403):
        return UpstreamAuthFailed(response.status)
    parts: list[bytes] = []
    size = 0
    cut = True
    while size < _MAX_ERROR_BODY:
        chunk = await response.content.readany()
        if not chunk:
            cut = False
            break
        clock.event()
        parts.append(chunk)
        size += len(chunk)
    relayed: dict[str, str] = {}
    for name, value in response.headers.items():
        lower = name.lower()
        if lower in _RELAYED_HEADERS and lower not in relayed and _HEADER_VALUE.fullmatch(value):
            relayed[lower] = value
    error = UpstreamStatusError(response.status, b"".join(parts), relayed)
    # Cut to length only after redaction (redact_key_code), or a key straddling the
    # cut would leave its first part unmasked.
    error.cut = cut
    return error


def redact_key_code(exc: UpstreamError, key_code: str | None, provider: str | None = None) -> None:
    """Make *exc* fit for the client: no decoded form of the key code in its message,
    body or headers (:mod:`aigw.proxy.redaction`), an upstream's mid-stream message
    redacted *before* it is cut to length, and an auth failure naming *provider*."""
    if isinstance(exc, UpstreamAuthFailed):
        exc.detail = UpstreamAuthFailed.message(exc.upstream_status, provider)
    if isinstance(exc, UpstreamMidStreamError) and exc.upstream_message:
        message = exc.upstream_message
        if key_code:
            message = redact_text(message, key_code)
        exc.detail = f"The upstream provider failed mid-stream: {message[:_MAX_STREAM_MESSAGE]}"
    if not key_code:
        if isinstance(exc, UpstreamStatusError):
            exc.body = exc.body[:_MAX_ERROR_BODY]
        return
    exc.detail = redact_text(exc.detail, key_code)
    if isinstance(exc, UpstreamStatusError):
        body = redact_body(exc.body, key_code)
        if exc.cut:
            # The read stopped mid-body: its tail may hold the start of a key code
            # (in any spelling: up to 6 bytes a character), which no redaction sees.
            body = body[: max(0, min(len(body), _MAX_ERROR_BODY) - 6 * len(key_code))]
        exc.body = body
        exc.relayed_headers = {
            name: value
            for name, value in exc.relayed_headers.items()
            if not quotes_secret(value, key_code)
        }


async def finish_upstream(response: aiohttp.ClientResponse, complete: bool) -> None:
    """Return the connection to the pool when its body was read to the end; otherwise
    close it, which also stops the upstream generating for nobody."""
    if complete and not response.content.at_eof():
        # The chunked terminator usually arrives with [DONE]; wait for it briefly.
        try:
            async with asyncio.timeout(1.0):
                while await response.content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError, OSError):
            complete = False
    if complete:
        response.release()
    else:
        response.close()


class _PolicyResolver(aiohttp.abc.AbstractResolver):
    """Resolves through the default resolver, then drops addresses the network policy
    refuses, so a hostname re-pointed at a metadata address (DNS rebinding) after the
    provider was validated is still refused at connect time."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = aiohttp.DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        results = await self._inner.resolve(host, port, family)
        allowed = []
        for entry in results:
            address = entry["host"]
            literal = f"[{address}]" if ":" in address else address
            try:
                check_upstream_url(f"http://{literal}/", allow_private=self._allow_private)
            except UpstreamRefused:
                continue
            allowed.append(entry)
        if not allowed:
            raise UpstreamRefused("no allowed address for the upstream host")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def create_upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The process's one upstream client (call inside the running loop)."""
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_max_connections,
        limit_per_host=0,
        # AIGW_UPSTREAM_KEEPALIVE_EXPIRY, 4 s: below the 5 s keep-alive of
        # uvicorn-based servers (vLLM, …), a pooled connection is dropped by us
        # before the server can close it under a request.
        keepalive_timeout=settings.upstream_keepalive_expiry,
        ttl_dns_cache=60,
        resolver=_PolicyResolver(settings.allow_private_upstreams),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=settings.upstream_connect_timeout,
            sock_connect=settings.upstream_connect_timeout,
            sock_read=None,
        ),
        # Bytes are relayed as they come; compression would only add CPU.
        auto_decompress=False,
        # Keys must never share state through cookies.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        raise_for_status=False,
        skip_auto_headers=("User-Agent",),
    )


class UpstreamClock:
    """First-byte, idle and total bounds in one lazily re-armed timer.

    ``async with clock:`` around code awaiting the upstream; :meth:`event` marks
    progress (an SSE event or a body chunk). One ``call_at`` handle is re-armed
    only when it fires early, so marking progress costs a clock read, not a
    timer. When a bound expires, or :meth:`abort` is called (the client went
    away), the task is cancelled and the block raises the matching
    :class:`UpstreamTimeout` (or :class:`ClientGone`).
    """

    __slots__ = (
        "_aborted",
        "_cancelling",
        "_expired",
        "_first_byte",
        "_first_event_at",
        "_handle",
        "_idle",
        "_inside",
        "_last_event",
        "_loop",
        "_task",
        "deadline",
        "max_event_bytes",
        "max_response_bytes",
        "started",
    )

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.get_running_loop()
        self.started = self._loop.time()
        self.deadline = self.started + settings.upstream_total_timeout
        self._first_byte = settings.upstream_first_byte_timeout
        self._idle = settings.upstream_idle_timeout
        self.max_response_bytes = settings.upstream_max_response_bytes
        self.max_event_bytes = settings.upstream_max_event_bytes
        self._last_event: float | None = None
        self._first_event_at: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._expired: type[UpstreamTimeout] | None = None
        self._aborted = False
        self._inside = False
        self._cancelling = 0

    @property
    def first_event_at(self) -> float | None:
        return self._first_event_at

    def event(self) -> None:
        now = self._loop.time()
        self._last_event = now
        if self._first_event_at is None:
            self._first_event_at = now
            # The timer was armed for the first-byte bound; from now on the idle
            # bound applies, and it can be earlier (idle < first byte): then re-arm
            # once, or a stall right after the first event would outlive its idle
            # bound. A later one (the defaults: equal bounds) leaves the timer be:
            # it re-arms itself when it fires early, as after any event.
            handle = self._handle
            if handle is not None and min(now + self._idle, self.deadline) < handle.when():
                handle.cancel()
                self._handle = None
                if self._inside:
                    self._arm()

    def _expiry(self) -> tuple[float, type[UpstreamTimeout]]:
        kind: type[UpstreamTimeout]
        if self._last_event is None:
            bound, kind = self.started + self._first_byte, UpstreamFirstByteTimeout
        else:
            bound, kind = self._last_event + self._idle, UpstreamIdleTimeout
        if self.deadline <= bound:
            return self.deadline, UpstreamDeadlineExceeded
        return bound, kind

    def _arm(self) -> None:
        when, _ = self._expiry()
        self._handle = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        if not self._inside:
            return
        when, kind = self._expiry()
        if self._loop.time() >= when:
            self._expired = kind
            self._cancel_task()
        else:
            self._handle = self._loop.call_at(when, self._on_timer)

    def _cancel_task(self) -> None:
        if self._task is not None and self._inside:
            self._task.cancel()

    def abort(self) -> None:
        """Interrupt the exchange because the client went away."""
        if not self._aborted:
            self._aborted = True
            self._cancel_task()

    @property
    def aborted(self) -> bool:
        return self._aborted

    async def __aenter__(self) -> UpstreamClock:
        self._task = asyncio.current_task()
        assert self._task is not None
        self._cancelling = self._task.cancelling()
        self._inside = True
        if self._aborted:
            self._task.cancel()
        elif self._handle is None:
            self._arm()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inside = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired is None and not self._aborted:
            return
        task = self._task
        assert task is not None
        if task.cancelling() > self._cancelling:
            task.uncancel()
        if exc_type is None:
            # The block finished before our cancellation landed: its result stands.
            return
        if exc_type is asyncio.CancelledError and task.cancelling() > self._cancelling:
            return  # someone else (shutdown) cancelled too: let it propagate
        if self._aborted:
            raise ClientGone() from None
        assert self._expired is not None
        raise self._expired() from None

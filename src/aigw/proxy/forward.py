"""The forward step every ``/v1`` endpoint shares, and the usage record around it.

:func:`forward` opens the upstream request (the key's provider, never a
client-chosen URL, under :class:`~aigw.proxy.upstream.UpstreamClock`'s bounds),
maps its failures, hands the answer to the endpoint's relay (whole or
streamed) and ends the exchange well-formed whatever happens: an upstream
failure becomes an error answer or a final error event (:func:`fail`), a
client that leaves or a shutdown is recorded as such. What differs per
endpoint is the parameter: the :class:`UpstreamCall` (adapter, URL, body) and
the relay (:class:`aigw.proxy.relay.Relay` for chat and messages,
:class:`aigw.proxy.responses.relay.ResponsesRelay`,
:class:`aigw.proxy.embeddings.EmbeddingsRelay`).

:class:`Recorded` wraps a whole exchange: whatever happened, one usage record
with its outcome, latency and time to first byte goes to the recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from starlette.types import Receive, Scope, Send
from yarl import URL

from aigw.budgets.guard import Hold
from aigw.config import Settings
from aigw.errors import AigwError, openai_error_body, openai_error_response
from aigw.proxy.adapters.base import Adapter
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import (
    ClientGone,
    InvalidApiKey,
    UpstreamError,
    UpstreamRefusedAddress,
    UpstreamStatusError,
    error_event,
)
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import flags_output
from aigw.proxy.upstream import (
    UpstreamClock,
    finish_upstream,
    map_client_error,
    post_upstream,
    read_status_error,
    redact_key_code,
)
from aigw.usage.entry import UsageEntry
from aigw.usage.recorder import UsageRecorder

log = logging.getLogger("aigw.proxy")

CLIENT_CLOSED_REQUEST = 499
# Seconds into an exchange before the gateway starts watching for the client leaving.
_WATCH_AFTER = 0.02


class AnswerRelay(Protocol):
    """An endpoint's relay: reads the upstream answer and writes the client's."""

    async def whole(self, response: aiohttp.ClientResponse) -> bool: ...

    async def stream(self, response: aiohttp.ClientResponse) -> bool: ...

    @property
    def output_tokens(self) -> int: ...


@dataclass(slots=True)
class UpstreamCall:
    """What goes upstream, and what a failure answer carries."""

    adapter: Adapter
    url: URL
    body: bytes
    stream: bool
    #: The ``x-aigw-*`` headers of the answer (an error answer too).
    response_headers: list[tuple[bytes, bytes]]
    #: Awaited once the upstream answered (or failed): a count still running settles.
    settle_count: Callable[[UsageEntry], Awaitable[None]] | None = None


async def send_error(
    scope: Scope, receive: Receive, send: Send, exc: AigwError, headers: list[tuple[bytes, bytes]]
) -> None:
    """Answer *exc* in OpenAI's envelope, with its own headers and *headers*."""
    response = openai_error_response(
        exc.status_code, exc.detail, code=exc.code, error_type=exc.openai_type, param=exc.param
    )
    if isinstance(exc, InvalidApiKey):
        response.headers["www-authenticate"] = "Bearer"
    elif exc.status_code == 413:
        response.headers["connection"] = "close"  # rather than drain a huge body
    for name, value in exc.headers.items():  # e.g. Retry-After on a 429, Allow on a 405
        response.headers[name] = value
    response.raw_headers.extend(headers)
    await response(scope, receive, send)


async def _watch_disconnect(receive: Receive, clock: UpstreamClock) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            clock.abort()
            return


async def forward(
    session: aiohttp.ClientSession,
    settings: Settings,
    key: ResolvedKey,
    call: UpstreamCall,
    make_relay: Callable[[UpstreamClock], AnswerRelay],
    entry: UsageEntry,
    receive: Receive,
    downstream: Downstream,
) -> None:
    """Send *call* upstream and relay the answer with the relay *make_relay* builds
    (given the exchange's clock); the outcome goes into *entry*."""
    clock = UpstreamClock(settings)
    # Watching for a client that leaves takes a task; most exchanges that end
    # within the first moments never need one, so it starts only after them.
    loop = asyncio.get_running_loop()
    watcher: list[asyncio.Task[None]] = []
    watch_timer = loop.call_later(
        _WATCH_AFTER,
        lambda: watcher.append(loop.create_task(_watch_disconnect(receive, clock))),
    )
    relay = make_relay(clock)
    settle = call.settle_count
    response: aiohttp.ClientResponse | None = None
    complete = False
    try:
        try:
            async with clock:
                if not key.upstream_allowed:
                    raise UpstreamRefusedAddress()
                headers = call.adapter.headers(key, entry.request_id, call.stream)
                response = await post_upstream(session, call.url, call.body, headers)
                if settle is not None:
                    await settle(entry)
                if response.status >= 400:
                    raise await read_status_error(response, clock)
                if call.stream:
                    complete = await relay.stream(response)
                else:
                    complete = await relay.whole(response)
        except (aiohttp.ClientError, OSError) as exc:
            raise map_client_error(exc) from None
    except UpstreamError as exc:
        redact_key_code(exc, key.key_code, key.provider_name)
        if settle is not None:
            await settle(entry)
        await fail(exc, call, entry, downstream, relay.output_tokens)
    except ClientGone:
        entry.output_tokens = relay.output_tokens
        raise
    except asyncio.CancelledError:
        # The server gave up on this request: a shutdown whose grace period
        # ended, or the client left. A stream that started still ends
        # well-formed, with a final error event (a write to a gone client
        # fails harmlessly), and the record says the gateway cut it.
        entry.output_tokens = relay.output_tokens
        if downstream.started and not downstream.ended:
            entry.error_code = "gateway_shutdown"
            with contextlib.suppress(Exception):
                await downstream.end(
                    error_event("gateway_shutdown", "The gateway is shutting down")
                )
        raise
    except Exception as exc:
        # A bug must not become a traceback for the client or a half-open stream.
        log.exception("proxy failure relaying %s", type(exc).__name__)
        await fail(AigwError("The gateway failed"), call, entry, downstream, relay.output_tokens)
    finally:
        watch_timer.cancel()
        for task in watcher:
            task.cancel()
        if response is not None:
            await finish_upstream(response, complete)
    if flags_output(key.limits, entry.output_tokens):
        entry.output_limit_exceeded = True


async def fail(
    exc: AigwError,
    call: UpstreamCall,
    entry: UsageEntry,
    downstream: Downstream,
    output_tokens: int,
) -> None:
    """End the exchange with *exc*: a final error event when the answer has started,
    else an answer in OpenAI's envelope (an upstream 4xx passes through, in the
    envelope the adapter gives it)."""
    entry.outcome = "upstream_error"
    entry.output_tokens = output_tokens
    entry.error_code = exc.code
    if downstream.started:
        entry.status_code = 200
        if not downstream.ended:
            await downstream.end(error_event(exc.code, exc.detail))
        return
    headers = call.response_headers
    if isinstance(exc, UpstreamStatusError) and 400 <= exc.upstream_status < 500:
        body, code = call.adapter.error_envelope(exc.body, exc.upstream_status)
        entry.status_code, entry.error_code = exc.upstream_status, code
        relayed = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in exc.relayed_headers.items()
        ]
        await downstream.answer(exc.upstream_status, body, [*relayed, *headers])
        return
    entry.status_code = exc.status_code
    body = openai_error_body(exc.detail, code=exc.code, error_type=exc.openai_type)
    await downstream.answer(exc.status_code, body, headers)


class Recorded:
    """``async with Recorded(…):`` around an exchange that resolved a key: one usage
    record whatever happened. A client that left ends the block quietly; a
    cancellation (the client left, or a shutdown's grace period ended) is recorded
    and propagates; a bug is recorded as ``internal_error`` and propagates (the
    app answers 500), unless *on_bug* answers it and the block ends there."""

    __slots__ = ("downstream", "entry", "hold", "on_bug", "pending", "recorder", "started")

    def __init__(
        self,
        recorder: UsageRecorder,
        entry: UsageEntry,
        downstream: Downstream,
        started: float,
        on_bug: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.recorder = recorder
        self.entry = entry
        self.downstream = downstream
        self.started = started
        self.on_bug = on_bug
        #: The request's budget standing (aigw.budgets): settled with what was counted.
        self.hold: Hold | None = None
        #: An input count still running: the record waits for it (it puts itself in).
        self.pending: asyncio.Future[Any] | None = None

    async def __aenter__(self) -> Recorded:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        entry, downstream = self.entry, self.downstream
        try:
            if exc_type is None:
                return False
            closed = 200 if downstream.started else CLIENT_CLOSED_REQUEST
            if issubclass(exc_type, ClientGone):
                entry.outcome, entry.status_code = "client_disconnected", closed
                return True
            if issubclass(exc_type, asyncio.CancelledError):
                # forward() says in error_code when it ended the stream for a shutdown.
                gone = "interrupted" if entry.error_code == "gateway_shutdown" else None
                entry.outcome, entry.status_code = gone or "client_disconnected", closed
                return False
            if not issubclass(exc_type, Exception):
                return False
            log.error("proxy failure", exc_info=exc)
            entry.outcome, entry.error_code = "upstream_error", "internal_error"
            entry.status_code = 500
            if self.on_bug is None:
                return False  # the app's handler answers 500 in OpenAI's envelope
            await self.on_bug()
            return True
        finally:
            entry.latency_ms = (time.perf_counter() - self.started) * 1000.0
            if downstream.first_byte_at is not None:
                entry.ttfb_ms = (downstream.first_byte_at - self.started) * 1000.0
            pending = self.pending
            if pending is not None and not pending.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            # Budgets (aigw.budgets): charge what was counted, return the rest.
            hold = self.hold
            if hold is not None and hold.settle(
                entry.outcome, entry.input_tokens, entry.output_tokens
            ):
                entry.budget_exceeded = True
            self.recorder.record(entry)

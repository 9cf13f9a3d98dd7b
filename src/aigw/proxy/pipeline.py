"""The life of a ``/v1`` request: authenticate → admit → forward → record.

:meth:`Pipeline.create_chat_completion` serves ``POST /v1/chat/completions``:

1. **authenticate** — the client token resolves through the key cache (no query);
2. **admit** — :mod:`aigw.proxy.admission` reads, checks, counts and judges the
   body; a refusal is a 4xx in OpenAI's envelope and nothing goes upstream;
3. **forward** — :mod:`aigw.proxy.upstream` sends the body to the key's
   provider (never a client-chosen URL) with the decrypted key code, under the
   first-byte, idle and total bounds, and :mod:`aigw.proxy.relay` relays the
   answer, whole or streamed, cutting it at the output limit;
4. **record** — one :class:`UsageEntry` from a ``finally`` block, whatever
   happened; recording only appends to the recorder's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
import orjson
from starlette.types import Receive, Scope, Send

from aigw.budgets.guard import Limiter
from aigw.config import Settings
from aigw.crypto import TokenHasher
from aigw.errors import AigwError, openai_error_response
from aigw.metrics import Metrics
from aigw.proxy import counting, exchange
from aigw.proxy.accounting import Output
from aigw.proxy.adapters import ADAPTERS
from aigw.proxy.adapters.base import Adapter
from aigw.proxy.admission import Admission, Admitted, bearer_token, key_headers
from aigw.proxy.downstream import Downstream
from aigw.proxy.embeddings import EmbeddingsEndpoint
from aigw.proxy.errors import (
    ClientGone,
    InvalidApiKey,
    KeyDisabled,
    UpstreamError,
    UpstreamRefusedAddress,
    error_event,
)
from aigw.proxy.exchange import ModelNotFound
from aigw.proxy.keycache import KeyCache, ResolvedKey
from aigw.proxy.messages.ingress import MessagesIngress
from aigw.proxy.policy import flags_output
from aigw.proxy.records import new_entry
from aigw.proxy.relay import Relay
from aigw.proxy.responses.endpoint import ResponsesEndpoint
from aigw.proxy.upstream import (
    UpstreamClock,
    finish_upstream,
    map_client_error,
    post_upstream,
    read_status_error,
    redact_key_code,
)
from aigw.proxy.upstream_count import UpstreamCounter
from aigw.usage.recorder import UsageEntry, UsageRecorder

log = logging.getLogger("aigw.proxy")

_CLIENT_CLOSED_REQUEST = 499
# Seconds into an exchange before the gateway starts watching for the client leaving.
_WATCH_AFTER = 0.02


async def _watch_disconnect(receive: Receive, clock: UpstreamClock) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            clock.abort()
            return


async def _send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    exc: AigwError,
    headers: list[tuple[bytes, bytes]],
) -> None:
    response = openai_error_response(
        exc.status_code, exc.detail, code=exc.code, error_type=exc.openai_type, param=exc.param
    )
    if isinstance(exc, InvalidApiKey):
        response.headers["www-authenticate"] = "Bearer"
    elif exc.status_code == 413:
        response.headers["connection"] = "close"  # rather than drain a huge body
    for name, value in exc.headers.items():  # e.g. Retry-After on a 429
        response.headers[name] = value
    response.raw_headers.extend(headers)
    await response(scope, receive, send)


_RESPONSES = ResponsesEndpoint()
_EMBEDDINGS = EmbeddingsEndpoint()


class Pipeline:
    """The ``/v1`` endpoints (raw ASGI) and what they share, built once per process."""

    def __init__(
        self,
        *,
        settings: Settings,
        keys: KeyCache,
        hasher: TokenHasher,
        encoders: counting.Encoders,
        session: aiohttp.ClientSession,
        recorder: UsageRecorder,
        metrics: Metrics,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.hasher = hasher
        self.encoders = encoders
        self.session = session
        self.recorder = recorder
        self.metrics = metrics
        self.upstream_counter = UpstreamCounter(
            session,
            timeout=settings.upstream_count_timeout,
            cache_size=settings.upstream_count_cache_size,
        )
        self.admission = Admission(
            encoders,
            settings.max_tokenize_chars,
            limiter,
            upstream_counter=self.upstream_counter,
        )
        self.adapters: dict[str, Adapter] = ADAPTERS
        self.messages = MessagesIngress(self)

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> ResolvedKey:
        token = bearer_token(headers)
        key = self.keys.get(self.hasher.hash(token)) if token else None
        if key is None:
            self.metrics.bad_token()
            raise InvalidApiKey()
        return key

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/models``: the one model the client token may use."""
        try:
            key = self.authenticate(scope["headers"])
            if not key.enabled:
                raise KeyDisabled()
        except AigwError as exc:
            await _send_error(scope, receive, send, exc, [])
            return
        model = {"id": key.model, "object": "model", "created": 0, "owned_by": key.provider_name}
        await Downstream(send).answer(200, orjson.dumps({"object": "list", "data": [model]}), [])

    async def retrieve_model(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/models/{model}``: the key's model; any other is 404 ``model_not_found``."""
        try:
            key = self.authenticate(scope["headers"])
            if not key.enabled:
                raise KeyDisabled()
            if scope.get("path_params", {}).get("model") != key.model:
                raise ModelNotFound(f"This key may use model '{key.model}' only")
        except AigwError as exc:
            await _send_error(scope, receive, send, exc, [])
            return
        model = {"id": key.model, "object": "model", "created": 0, "owned_by": key.provider_name}
        await Downstream(send).answer(200, orjson.dumps(model), [])

    async def create_response(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/responses`` (:mod:`aigw.proxy.responses`)."""
        await exchange.run(self, _RESPONSES, scope, receive, send)

    async def create_embedding(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/embeddings`` (:mod:`aigw.proxy.embeddings`)."""
        await exchange.run(self, _EMBEDDINGS, scope, receive, send)

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every other ``/v1`` path: 404 (405 for a served path) listing what is served,
        the same answer with or without a token (probing reveals nothing more to one)."""
        # Allow (on a 405) travels in the error's own headers, which _send_error adds.
        await _send_error(scope, receive, send, exchange.unknown_endpoint(scope), [])

    async def create_message(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/messages`` (Anthropic's Messages API): :mod:`aigw.proxy.messages`."""
        await self.messages.create(scope, receive, send)

    async def count_message_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/messages/count_tokens``."""
        await self.messages.count_tokens(scope, receive, send)

    async def create_chat_completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/chat/completions``."""
        started = time.perf_counter()
        try:
            key = self.authenticate(scope["headers"])
        except AigwError as exc:
            await _send_error(scope, receive, send, exc, [])
            return
        entry = new_entry(scope, key, "chat.completions")
        downstream = Downstream(send, self.settings.client_write_timeout)
        admitted: Admitted | None = None
        try:
            adapter = self.adapters.get(key.provider_kind)
            try:
                admitted = await self.admission.admit(
                    scope["headers"], receive, key, adapter, entry
                )
            except AigwError as exc:
                entry.outcome, entry.status_code, entry.error_code = (
                    "rejected",
                    exc.status_code,
                    exc.code,
                )
                await _send_error(scope, receive, send, exc, key_headers(key, entry))
                return
            assert adapter is not None  # admission refuses a kind without one
            await self._forward(key, adapter, admitted, entry, receive, downstream)
        except ClientGone:
            entry.outcome = "client_disconnected"
            entry.status_code = 200 if downstream.started else _CLIENT_CLOSED_REQUEST
        except asyncio.CancelledError:
            # The server gave up on the request: the client left, or a shutdown's
            # grace period ended (then _forward has ended the stream with an
            # error event and said so in error_code). The record still says which.
            if entry.error_code == "gateway_shutdown":
                entry.outcome = "interrupted"
            else:
                entry.outcome = "client_disconnected"
            entry.status_code = 200 if downstream.started else _CLIENT_CLOSED_REQUEST
            raise
        except Exception:
            # A bug: the app's handler answers 500 in OpenAI's envelope; recorded here.
            log.exception("proxy failure")
            entry.outcome, entry.error_code = "upstream_error", "internal_error"
            entry.status_code = 500
            raise
        finally:
            entry.latency_ms = (time.perf_counter() - started) * 1000.0
            if downstream.first_byte_at is not None:
                entry.ttfb_ms = (downstream.first_byte_at - started) * 1000.0
            # Budgets (aigw.budgets): charge what was counted, return the rest.
            if admitted is not None and admitted.hold is not None:
                hold = admitted.hold
                if hold.settle(entry.outcome, entry.input_tokens, entry.output_tokens):
                    entry.budget_exceeded = True
            self.recorder.record(entry)

    async def _forward(
        self,
        key: ResolvedKey,
        adapter: Adapter,
        admitted: Admitted,
        entry: UsageEntry,
        receive: Receive,
        downstream: Downstream,
    ) -> None:
        clock = UpstreamClock(self.settings)
        # Watching for a client that leaves takes a task; most exchanges that end
        # within the first moments never need one, so it starts only after them.
        loop = asyncio.get_running_loop()
        watcher: list[asyncio.Task[None]] = []
        watch_timer = loop.call_later(
            _WATCH_AFTER,
            lambda: watcher.append(loop.create_task(_watch_disconnect(receive, clock))),
        )
        output = Output(
            await self.encoders.aget(key.encoding), admitted.decision.cut_output_at, admitted.hold
        )
        relay = Relay(adapter, admitted, key.limits, entry, downstream, clock, output)
        response: aiohttp.ClientResponse | None = None
        complete = False
        try:
            try:
                async with clock:
                    if not key.upstream_allowed:
                        raise UpstreamRefusedAddress()
                    headers = adapter.headers(key, entry.request_id, admitted.stream)
                    response = await post_upstream(
                        self.session,
                        adapter.url(key, admitted.stream),
                        admitted.upstream_body,
                        headers,
                    )
                    await admitted.settle_count(entry)
                    if response.status >= 400:
                        raise await read_status_error(response, clock)
                    if admitted.stream:
                        complete = await relay.stream(response)
                    else:
                        complete = await relay.whole(response)
            except (aiohttp.ClientError, OSError) as exc:
                raise map_client_error(exc) from None
        except UpstreamError as exc:
            redact_key_code(exc, key.key_code, key.provider_name)
            await admitted.settle_count(entry)
            await relay.fail(exc)
        except ClientGone:
            entry.output_tokens = output.tokens
            raise
        except asyncio.CancelledError:
            # The server gave up on this request: a shutdown whose grace period
            # ended, or the client left. A stream that started still ends
            # well-formed, with a final error event (a write to a gone client
            # fails harmlessly), and the record says the gateway cut it.
            entry.output_tokens = output.tokens
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
            await relay.fail(AigwError("The gateway failed"))
        finally:
            watch_timer.cancel()
            for task in watcher:
                task.cancel()
            if response is not None:
                await finish_upstream(response, complete)
        if flags_output(key.limits, entry.output_tokens):
            entry.output_limit_exceeded = True

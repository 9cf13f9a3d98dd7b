"""The life of a ``/v1`` request: authenticate → admit → forward → record.

:meth:`Pipeline.create_chat_completion` serves ``POST /v1/chat/completions``:

1. **authenticate** — the client token resolves through the key cache (no query);
2. **admit** — :mod:`aigw.proxy.admission` reads, checks, counts and judges the
   body; a refusal is a 4xx in OpenAI's envelope and nothing goes upstream;
3. **forward** — :mod:`aigw.proxy.upstream` sends the body to the key's
   provider (never a client-chosen URL) with the decrypted key code, under the
   first-byte, idle and total bounds, and :mod:`aigw.proxy.relay` relays the
   answer, whole or streamed, cutting it at the output limit;
4. **record** — one :class:`UsageEntry` from :class:`aigw.proxy.forward.Recorded`,
   whatever happened; recording only appends to the recorder's buffer.

The forward step (3) is :func:`aigw.proxy.forward.forward`, which every ``/v1``
endpoint shares with its own relay.
"""

from __future__ import annotations

import time

import aiohttp
import orjson
from starlette.types import Receive, Scope, Send

from aigw.budgets.guard import Limiter
from aigw.config import Settings
from aigw.crypto import TokenHasher
from aigw.errors import AigwError
from aigw.metrics import Metrics
from aigw.proxy import counting, exchange
from aigw.proxy.accounting import Output
from aigw.proxy.adapters import ADAPTERS
from aigw.proxy.adapters.base import Adapter
from aigw.proxy.admission import Admission, Admitted, bearer_token, key_headers
from aigw.proxy.downstream import Downstream
from aigw.proxy.embeddings import EmbeddingsEndpoint
from aigw.proxy.errors import InvalidApiKey, KeyDisabled
from aigw.proxy.exchange import ModelNotFound
from aigw.proxy.forward import Recorded, UpstreamCall, forward, send_error
from aigw.proxy.keycache import KeyCache, ResolvedKey
from aigw.proxy.messages.ingress import MessagesIngress
from aigw.proxy.records import new_entry
from aigw.proxy.relay import Relay
from aigw.proxy.responses.endpoint import ResponsesEndpoint
from aigw.proxy.upstream import UpstreamClock
from aigw.proxy.upstream_count import UpstreamCounter
from aigw.usage.entry import UsageEntry
from aigw.usage.recorder import UsageRecorder

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
            await send_error(scope, receive, send, exc, [])
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
            await send_error(scope, receive, send, exc, [])
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
        # Allow (on a 405) travels in the error's own headers, which send_error adds.
        await send_error(scope, receive, send, exchange.unknown_endpoint(scope), [])

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
            await send_error(scope, receive, send, exc, [])
            return
        entry = new_entry(scope, key, "chat.completions")
        downstream = Downstream(send, self.settings.client_write_timeout)
        async with Recorded(self.recorder, entry, downstream, started) as record:
            adapter = self.adapters.get(key.provider_kind)
            try:
                admitted = await self.admission.admit(
                    scope["headers"], receive, key, adapter, entry
                )
            except AigwError as exc:
                entry.status_code, entry.error_code = exc.status_code, exc.code
                await send_error(scope, receive, send, exc, key_headers(key, entry))
                return
            record.hold, record.pending = admitted.hold, admitted.pending_count
            assert adapter is not None  # admission refuses a kind without one
            try:
                await self.forward(key, adapter, admitted, entry, receive, downstream)
            finally:
                counting_now = admitted.count_for_record(entry)
                if counting_now is not None:
                    record.pending = counting_now

    async def forward(
        self,
        key: ResolvedKey,
        adapter: Adapter,
        admitted: Admitted,
        entry: UsageEntry,
        receive: Receive,
        downstream: Downstream,
    ) -> None:
        """Forward an admitted Chat Completions request (``/v1/messages`` too) and
        relay its answer, counted and cut by :class:`Relay`."""
        output = Output(
            await self.encoders.aget(key.encoding), admitted.decision.cut_output_at, admitted.hold
        )

        async def settle_if_counted(entry: UsageEntry) -> None:
            # The answer does not wait for a count still running (admitted on the
            # size bound): its headers then leave the count out, and the record
            # waits for it (Recorded.pending), after the answer.
            pending = admitted.pending_count
            if pending is not None and pending.done():
                await admitted.settle_count(entry)

        call = UpstreamCall(
            adapter,
            adapter.url(key, admitted.stream),
            admitted.upstream_body,
            admitted.stream,
            admitted.response_headers,
            settle_if_counted if admitted.pending_count is not None else None,
        )

        def relay(clock: UpstreamClock) -> Relay:
            return Relay(adapter, admitted, key.limits, entry, downstream, clock, output)

        await forward(self.session, self.settings, key, call, relay, entry, receive, downstream)

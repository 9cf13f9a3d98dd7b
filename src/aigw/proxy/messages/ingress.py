"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API in.

The same stages as ``/v1/chat/completions`` serve it: the key cache resolves
the client token (``x-api-key``, as the Anthropic SDKs send it, or
``Authorization: Bearer``); the body is checked as a Messages request, counted
(as the Chat Completions request it stands for: :mod:`.wire`) and judged by
:func:`aigw.proxy.policy.decide` with ``max_tokens`` as the requested output
bound; :meth:`Pipeline.forward` sends it upstream and the relay counts and
cuts the answer. Only the edges differ: ``anthropic`` providers get the
client's Messages body itself (``model`` filled in when omitted), other kinds
the Chat Completions translation; and :class:`MessagesDownstream` turns the
relay's Chat Completions output into a Message or the Messages event stream,
and every error into Anthropic's error shape.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Receive, Scope, Send

from aigw.errors import AigwError, UnsupportedMediaType
from aigw.proxy import counting
from aigw.proxy.admission import (
    Admitted,
    bearer_token,
    key_headers,
)
from aigw.proxy.body import content_type_ok, off_loop, parse_unambiguous, read_body
from aigw.proxy.counting.offload import CountingPool, Refusal
from aigw.proxy.counting.prompt import InputCount
from aigw.proxy.counting.workers import Inspected, inspect_messages_body
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import (
    ClientGone,
    InputNotCountable,
    InputTokenLimitExceeded,
    InvalidApiKey,
    KeyDisabled,
    KeyUnusable,
    ModelNotAllowed,
    OutputTokenLimitExceeded,
    UnsupportedProvider,
)
from aigw.proxy.forward import Recorded
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.messages import wire
from aigw.proxy.messages.checks import (
    MESSAGES_NAMES,
    chat_forms,
    encode_upstream,
    fill_model,
    validate,
)
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, decide, refusal_limit
from aigw.proxy.records import new_entry
from aigw.usage.entry import UsageEntry

if TYPE_CHECKING:
    from aigw.proxy.pipeline import Pipeline


class MessagesDownstream(Downstream):
    """The client side of a ``/v1/messages`` exchange: what the relay writes in
    Chat Completions form goes out as Anthropic's Messages API."""

    __slots__ = ("_entry", "_model", "_stream")

    def __init__(
        self, send: Send, entry: UsageEntry, model: str, write_timeout: float | None = None
    ) -> None:
        super().__init__(send, write_timeout)
        self._entry = entry
        self._model = model
        self._stream: wire.MessageStream | None = None

    def _translate(self, data: bytes) -> bytes:
        if self._stream is None:
            self._stream = wire.MessageStream(self._entry.input_tokens, self._model)
        return self._stream.feed(data)

    async def write(self, data: bytes) -> None:
        await super().write(self._translate(data))

    async def end(self, data: bytes = b"") -> None:
        await super().end(self._translate(data) if data else b"")

    async def answer(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if status == 200:
            completion = orjson.loads(body)
            message = wire.to_message(completion, self._entry.input_tokens)
            body = orjson.dumps(message)
        else:
            body = wire.error_from_openai(status, body)
        length = (b"content-length", str(len(body)).encode())
        await self.start(status, [(b"content-type", b"application/json"), length, *headers])
        await Downstream.end(self, body)  # already translated


async def _send_error(
    send: Send, exc: AigwError, headers: list[tuple[bytes, bytes]], downstream: Downstream | None
) -> None:
    extra: list[tuple[bytes, bytes]] = []
    if isinstance(exc, InvalidApiKey):
        extra.append((b"www-authenticate", b"Bearer"))  # RFC 9110: a 401 names a scheme
    elif exc.status_code == 413:
        extra.append((b"connection", b"close"))  # rather than drain a huge body
    body = wire.error_body(exc.status_code, exc.detail, exc.code)
    await (downstream or Downstream(send)).answer(exc.status_code, body, [*extra, *headers])


def _api_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """``x-api-key`` (the Anthropic SDKs' ``api_key``), else a bearer token."""
    for name, value in headers:
        if name == b"x-api-key":
            token = value.strip()
            return token.decode("latin-1") if token else None
    return bearer_token(headers)


def _scratch_entry(scope: Scope, key: ResolvedKey) -> UsageEntry:
    """An entry nobody records (count_tokens is not a generation)."""
    limits = key.limits
    return UsageEntry(
        request_id=scope.get("state", {}).get("request_id", "-"),
        api_key_id=key.id,
        alias=key.alias,
        provider=key.provider_name,
        model=key.model,
        outcome="counted",
        status_code=200,
        input_limit=limits.input_limit,
        output_limit=limits.output_limit,
        usage_limit=limits.usage_limit,
    )


class MessagesIngress:
    """The Messages API endpoints of one :class:`Pipeline`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> ResolvedKey:
        pipeline = self.pipeline
        token = _api_key(headers)
        key = pipeline.keys.get(pipeline.hasher.hash(token)) if token else None
        if key is None:
            pipeline.metrics.bad_token()
            raise InvalidApiKey(
                "Invalid client token: send 'x-api-key: <client token>' "
                "or 'Authorization: Bearer <client token>'"
            )
        return key

    async def _read(
        self, scope: Scope, receive: Receive, key: ResolvedKey
    ) -> tuple[bytes, CountingPool | None]:
        """The body as received, and the worker pool that is to parse and count it
        (``None``: this process does, :meth:`_parse`)."""
        if not key.enabled:
            raise KeyDisabled()
        if key.key_code is None:
            raise KeyUnusable()
        if not content_type_ok(scope["headers"]):
            raise UnsupportedMediaType()
        raw = await read_body(receive)
        pool = self.pipeline.admission.pool
        if pool is None or not pool.takes(raw):
            return raw, None
        return raw, pool

    async def _parse(self, raw: bytes, *, require_max_tokens: bool) -> dict[str, Any]:
        """*raw* as a checked Messages request with no duplicate member name and
        no case variant of a name the gateway reads (400 ``ambiguous_field``);
        parsed off the loop when large."""
        check = functools.partial(validate, require_max_tokens=require_max_tokens)
        executor = self.pipeline.encoders.executor
        return await off_loop(raw, executor, parse_unambiguous, raw, MESSAGES_NAMES, check)

    async def _inspect(
        self,
        pool: CountingPool,
        raw: bytes,
        key: ResolvedKey,
        *,
        require_max_tokens: bool,
        translate: bool,
    ) -> Inspected:
        """:meth:`_parse`, the model rule, :meth:`_count` (and with *translate*,
        the body to forward) of a large body, in a worker process."""
        adapter = self.pipeline.adapters.get(key.provider_kind)
        return await pool.run(
            functools.partial(
                inspect_messages_body,
                kind=adapter.kind if adapter is not None else None,
                require_max_tokens=require_max_tokens,
                translate=translate,
                stop_above=refusal_limit(key.limits),
                counter=self.pipeline.upstream_counter.applies(key),
            ),
            raw,
            key.model,
            key.encoding,
            self.pipeline.settings.max_tokenize_chars,
        )

    async def _count(
        self, key: ResolvedKey, raw: bytes, body: dict[str, Any], entry: UsageEntry
    ) -> tuple[dict[str, Any], InputCount]:
        """The Chat Completions form of *body* and the count its input limit is
        judged by (tiktoken, or the provider's counter: :mod:`aigw.proxy.upstream_count`).
        An ``anthropic`` upstream gets *body* itself: what the translation drops
        is counted too, as its JSON text (:func:`request.untranslated`)."""
        pipeline = self.pipeline
        adapter = pipeline.adapters.get(key.provider_kind)
        native = adapter is not None and adapter.kind == "anthropic"
        executor = pipeline.encoders.executor
        chat, view = await off_loop(raw, executor, chat_forms, body, key.model, native)
        counted = await counting.count_chat_input_async(
            view,
            await pipeline.encoders.aget(key.encoding),
            max_chars=pipeline.settings.max_tokenize_chars,
            body_bytes=len(raw),
            executor=executor,
            stop_above=refusal_limit(key.limits),
        )
        if adapter is not None:
            counted = await pipeline.upstream_counter.judge(
                key, adapter, chat, counted, entry, body if native else None
            )
        return chat, counted

    async def admit(
        self, scope: Scope, receive: Receive, key: ResolvedKey, entry: UsageEntry
    ) -> Admitted:
        adapter = self.pipeline.adapters.get(key.provider_kind)
        if adapter is None:
            raise UnsupportedProvider()
        raw, pool = await self._read(scope, receive, key)
        upstream: bytes | Refusal | None = None
        if pool is not None:
            inspected = await self._inspect(pool, raw, key, require_max_tokens=True, translate=True)
            # The chat form's small fields, all the relay reads of it.
            chat = {"model": inspected.head["model"], "stream": inspected.head["stream"]}
            max_tokens, stream = inspected.head["max_tokens"], inspected.head["stream"]
            assert inspected.count is not None
            counted = await self.pipeline.upstream_counter.judge(
                key, adapter, chat, inspected.count, entry, prepared=inspected.counter_body
            )
            upstream = raw if inspected.upstream is None else inspected.upstream
        else:
            body = await self._parse(raw, require_max_tokens=True)
            max_tokens = body["max_tokens"]
            modified = fill_model(body, key.model)
            stream = body.get("stream") is True
            chat, counted = await self._count(key, raw, body, entry)
        entry.stream = stream
        entry.input_tokens = counted.tokens
        decision = decide(key.limits, counted.tokens, max_tokens, input_exact=counted.exact)
        entry.input_limit_exceeded = decision.input_exceeded
        entry.output_limit_exceeded = decision.output_exceeded
        if decision.rejection == INPUT_LIMIT_EXCEEDED and counted.uncountable:
            # A document by url or file id, or one the gateway cannot bound: the
            # same answer as the other endpoints give for such a file.
            raise InputNotCountable(
                f"The input cannot be counted against this key's input limit of "
                f"{key.limits.input_limit} tokens: {counted.uncountable}",
                param="messages",
            )
        if decision.rejection == INPUT_LIMIT_EXCEEDED:
            counted_as = str(counted.tokens) if counted.exact else f"at least {counted.tokens}"
            raise InputTokenLimitExceeded(
                f"The input is {counted_as} tokens; this key allows "
                f"{key.limits.input_limit} per request",
                param="messages",
            )
        if decision.rejection is not None:
            raise OutputTokenLimitExceeded(
                f"The request asks for up to {max_tokens} output tokens (max_tokens); "
                f"this key allows {key.limits.output_limit}",
                param="max_tokens",
            )
        if isinstance(upstream, Refusal):
            raise upstream.exception()
        if upstream is None:
            executor = self.pipeline.encoders.executor
            upstream = await off_loop(
                raw, executor, encode_upstream, adapter.kind, body, chat, modified, raw
            )
        headers = key_headers(key, entry)
        exceeded = decision.exceeded_header()
        if exceeded:
            headers.append((b"x-aigw-limit-exceeded", exceeded.encode()))
        return Admitted(
            body=chat,
            upstream_body=upstream,
            stream=stream,
            client_wants_usage=True,  # message_delta always carries usage
            decision=decision,
            injected_max=False,  # max_tokens is required: the client's bound stands
            response_headers=headers,
        )

    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/messages``; one usage record per request that resolved a key."""
        started = time.perf_counter()
        try:
            key = self.authenticate(scope["headers"])
        except AigwError as exc:
            await _send_error(send, exc, [], None)
            return
        entry = new_entry(scope, key, "messages")
        downstream = MessagesDownstream(
            send, entry, key.model, self.pipeline.settings.client_write_timeout
        )

        async def answer_bug() -> None:
            if not downstream.started:
                body = wire.error_body(500, "The gateway failed", "internal_error")
                await downstream.answer(500, body, [])

        recorder = self.pipeline.recorder
        async with Recorded(recorder, entry, downstream, started, answer_bug):
            try:
                admitted = await self.admit(scope, receive, key, entry)
            except AigwError as exc:
                entry.status_code, entry.error_code = exc.status_code, exc.code
                await _send_error(send, exc, key_headers(key, entry), downstream)
                return
            adapter = self.pipeline.adapters[key.provider_kind]
            await self.pipeline.forward(key, adapter, admitted, entry, receive, downstream)

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``, the count the
        gateway judges the input limit by. Not a generation: no usage record."""
        try:
            key = self.authenticate(scope["headers"])
            raw, pool = await self._read(scope, receive, key)
            if pool is not None:
                inspected = await self._inspect(
                    pool, raw, key, require_max_tokens=False, translate=False
                )
                assert inspected.count is not None
                counted = inspected.count
                adapter = self.pipeline.adapters.get(key.provider_kind)
                if adapter is not None:
                    counted = await self.pipeline.upstream_counter.judge(
                        key,
                        adapter,
                        {},
                        counted,
                        _scratch_entry(scope, key),
                        prepared=inspected.counter_body,
                    )
            else:
                body = await self._parse(raw, require_max_tokens=False)
                if body.get("model") not in (None, key.model):
                    raise ModelNotAllowed(
                        f"This key may use model '{key.model}' only", param="model"
                    )
                _, counted = await self._count(key, raw, body, _scratch_entry(scope, key))
        except AigwError as exc:
            await _send_error(send, exc, [], None)
            return
        except ClientGone:
            return
        answer = orjson.dumps({"input_tokens": counted.tokens})
        await Downstream(send).answer(200, answer, [*key.limit_headers])

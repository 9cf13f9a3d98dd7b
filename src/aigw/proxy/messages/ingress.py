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
    MAX_OUTPUT_TOKENS,
    Admitted,
    bearer_token,
    key_headers,
    max_tokens_field,
)
from aigw.proxy.body import Names, content_type_ok, names, off_loop, parse_unambiguous, read_body
from aigw.proxy.counting.prompt import InputCount
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import (
    ClientGone,
    InputNotCountable,
    InputTokenLimitExceeded,
    InvalidApiKey,
    InvalidRequest,
    KeyDisabled,
    KeyUnusable,
    ModelNotAllowed,
    OutputTokenLimitExceeded,
    UnsupportedProvider,
)
from aigw.proxy.forward import Recorded
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.messages import request, wire
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, decide, refusal_limit
from aigw.proxy.records import new_entry
from aigw.usage.recorder import UsageEntry

if TYPE_CHECKING:
    from aigw.proxy.pipeline import Pipeline

_ROLES = ("user", "assistant")

_SOURCE = names({"type", "media_type", "data", "url", "file_id"})
_BLOCK_CHILDREN: dict[str, Names] = {"source": _SOURCE}
_BLOCK = Names(
    frozenset(
        {"type", "text", "source", "id", "name", "input", "tool_use_id", "content"}
        | {"is_error", "cache_control", "citations", "thinking", "signature", "title"}
    ),
    _BLOCK_CHILDREN,
)
_BLOCK_CHILDREN["content"] = _BLOCK  # a tool_result holds blocks too
#: What ``POST /v1/messages`` reads: a case variant of one of these is refused.
MESSAGES_NAMES = names(
    {"model", "messages", "system", "max_tokens", "stream", "tools", "tool_choice"}
    | {"thinking", "temperature", "top_p", "top_k", "stop_sequences", "metadata"}
    | {"service_tier", "container", "mcp_servers"},
    messages=names({"role", "content"}, content=_BLOCK),
    system=_BLOCK,
    tools=names({"type", "name", "description", "input_schema", "cache_control"}),
    tool_choice=names({"type", "name", "disable_parallel_tool_use"}),
    metadata=names({"user_id"}),
    thinking=names({"type", "budget_tokens"}),
)


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


def _check_blocks(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or an array", param=where)
    for position, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(
                f"{where}.content[{position}] must be an object with a 'type'", param=where
            )


def _optional(body: dict[str, Any], field: str, kind: type | tuple[type, ...], name: str) -> None:
    if body.get(field) is not None and not isinstance(body[field], kind):
        raise InvalidRequest(f"'{field}' must be {name}", param=field)


def validate(body: Any, *, require_max_tokens: bool) -> int | None:
    """Just enough shape to count, translate and forward safely (the upstream
    judges the rest); returns ``max_tokens``."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        if message.get("role") not in _ROLES:
            raise InvalidRequest(f"{where}.role must be user or assistant", param=where + ".role")
        _check_blocks(message.get("content"), where)
    system = body.get("system")
    if system is not None:
        _check_blocks(system, "system")
    _optional(body, "model", str, "a string")
    _optional(body, "stream", bool, "a boolean")
    _optional(body, "tools", list, "an array")
    _optional(body, "tool_choice", dict, "an object")
    _optional(body, "metadata", dict, "an object")
    _optional(body, "stop_sequences", list, "an array")
    if any(not isinstance(tool, dict) for tool in body.get("tools") or []):
        raise InvalidRequest("'tools' must be an array of objects", param="tools")
    if any(not isinstance(stop, str) for stop in body.get("stop_sequences") or []):
        raise InvalidRequest("'stop_sequences' must be an array of strings")
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not require_max_tokens:
        return None
    if type(max_tokens) is not int or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS:
        raise InvalidRequest(
            f"'max_tokens' is required: an integer from 1 to {MAX_OUTPUT_TOKENS}",
            param="max_tokens",
        )
    return max_tokens


def _chat_forms(
    body: dict[str, Any], model: str, native: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Chat Completions request *body* stands for, and the one to count: the
    same, plus what a native upstream is sent that the translation drops."""
    chat = request.to_chat_request(body, max_tokens_field(model))
    if not native:
        return chat, chat
    return chat, {**chat, "messages": [*chat["messages"], *request.untranslated(body)]}


def _encode(
    adapter: Any, body: dict[str, Any], chat: dict[str, Any], modified: bool, raw: bytes
) -> bytes:
    if adapter.kind == "anthropic":
        return orjson.dumps(body) if modified else raw
    return adapter.encode_request(chat, b"", True)


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
        self, scope: Scope, receive: Receive, key: ResolvedKey, *, require_max_tokens: bool
    ) -> tuple[bytes, dict[str, Any]]:
        """The body, as received and parsed: a checked Messages request with no
        duplicate member name and no case variant of a name the gateway reads
        (400 ``ambiguous_field``); parsed off the loop when large."""
        if not key.enabled:
            raise KeyDisabled()
        if key.key_code is None:
            raise KeyUnusable()
        if not content_type_ok(scope["headers"]):
            raise UnsupportedMediaType()
        raw = await read_body(receive)
        check = functools.partial(validate, require_max_tokens=require_max_tokens)
        executor = self.pipeline.encoders.executor
        body = await off_loop(raw, executor, parse_unambiguous, raw, MESSAGES_NAMES, check)
        return raw, body

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
        try:
            chat, view = await off_loop(raw, executor, _chat_forms, body, key.model, native)
        except (TypeError, ValueError):  # a value too deeply nested to write as JSON text
            raise InvalidRequest("The request body is nested too deeply") from None
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
        raw, body = await self._read(scope, receive, key, require_max_tokens=True)
        max_tokens = body["max_tokens"]
        modified = False
        if body.get("model") is None:
            body["model"] = key.model
            modified = True
        elif body["model"] != key.model:
            raise ModelNotAllowed(f"This key may use model '{key.model}' only", param="model")
        stream = entry.stream = body.get("stream") is True
        chat, counted = await self._count(key, raw, body, entry)
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
        if stream and adapter.kind != "anthropic":
            chat["stream_options"] = {"include_usage": True}
        try:
            executor = self.pipeline.encoders.executor
            upstream_body = await off_loop(
                raw, executor, _encode, adapter, body, chat, modified, raw
            )
        except TypeError:  # orjson writes at most 255 levels but reads up to 1024
            raise InvalidRequest("The request body is nested too deeply") from None
        except (AttributeError, ValueError, KeyError, IndexError) as exc:
            # A shape the provider translation cannot take: the client's to fix.
            raise InvalidRequest(
                "The request cannot be translated for this key's provider: a field has "
                f"an unexpected shape ({type(exc).__name__})"
            ) from None
        headers = key_headers(key, entry)
        exceeded = decision.exceeded_header()
        if exceeded:
            headers.append((b"x-aigw-limit-exceeded", exceeded.encode()))
        return Admitted(
            body=chat,
            upstream_body=upstream_body,
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
            raw, body = await self._read(scope, receive, key, require_max_tokens=False)
            if body.get("model") not in (None, key.model):
                raise ModelNotAllowed(f"This key may use model '{key.model}' only", param="model")
            _, counted = await self._count(key, raw, body, _scratch_entry(scope, key))
        except AigwError as exc:
            await _send_error(send, exc, [], None)
            return
        except ClientGone:
            return
        answer = orjson.dumps({"input_tokens": counted.tokens})
        await Downstream(send).answer(200, answer, [*key.limit_headers])

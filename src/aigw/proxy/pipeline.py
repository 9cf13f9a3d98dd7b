"""The proxy's work for one request: admit, forward, relay, record.

:meth:`ProxyService.chat_completions` is the whole life of a
``POST /v1/chat/completions``:

1. **admit** — the client token resolves through the key cache (no query); the
   body is read and parsed with orjson (NaN, Infinity, lone surrogates and
   invalid UTF-8 are refused), checked just enough to count it, counted, and
   judged by :func:`aigw.proxy.policy.decide`. Any refusal is a 4xx in
   OpenAI's envelope and nothing goes upstream.
2. **forward** — the body goes to the key's provider (never a client-chosen
   URL) with the decrypted key code, unchanged except for the gateway's edits:
   the key's model when omitted, an output bound when the policy asks for one,
   and ``stream_options.include_usage`` on streams.
3. **relay** — upstream events are relayed byte for byte unless the gateway
   changes them (the cut-off at the output limit, stripping the usage chunk the
   client did not ask for). Response headers wait for the first event, so a
   failure before it is still a proper 502/504; after it, a failure becomes a
   final ``data: {"error": …}`` event and the stream ends without ``[DONE]``
   (the SDKs raise on that event; a client waiting for ``[DONE]`` sees an
   incomplete stream, which is what it is).
4. **record** — one :class:`UsageEntry` from a ``finally`` block, whatever
   happened; recording only appends to the recorder's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from aigw.config import Settings
from aigw.crypto import TokenHasher, mask_secret
from aigw.errors import openai_error_response
from aigw.metrics import Metrics
from aigw.proxy import tokens
from aigw.proxy.adapters.anthropic import AnthropicAdapter
from aigw.proxy.adapters.base import Adapter, StreamItem
from aigw.proxy.adapters.openai import OpenAIAdapter
from aigw.proxy.errors import (
    BodyTooLarge,
    InputTokenLimitExceeded,
    InvalidApiKey,
    InvalidJson,
    InvalidRequest,
    KeyDisabled,
    KeyUnusable,
    ModelNotAllowed,
    OutputTokenLimitExceeded,
    ProxyError,
    UnsupportedContentType,
    UnsupportedProvider,
)
from aigw.proxy.keycache import KeyCache, ResolvedKey
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, Decision, decide, output_exceeded
from aigw.proxy.sse import DONE_EVENT, SSEDecoder, encode_json
from aigw.proxy.upstream import (
    ClientGone,
    UpstreamClock,
    UpstreamConnectionLost,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefusedAddress,
    UpstreamStatusError,
    is_retryable_before_send,
    map_client_error,
)
from aigw.usage.recorder import UsageEntry, UsageRecorder

log = logging.getLogger("aigw.proxy")

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Beyond any model's real output; also the largest limit a key can hold.
MAX_OUTPUT_TOKENS = 10_000_000
# Models that take only ``max_completion_tokens`` (OpenAI reasoning models).
_COMPLETION_TOKENS_MODELS = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)
# Upstream response headers worth relaying to the client.
_RELAYED_HEADER_PREFIXES = (b"x-ratelimit-", b"retry-after", b"openai-processing-ms")
_MAX_ERROR_BODY = 64 * 1024
_CLIENT_CLOSED_REQUEST = 499
# Seconds into an exchange before the gateway starts watching for the client leaving.
_WATCH_AFTER = 0.02

_JSON = b"application/json"
_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            credentials = credentials.strip()
            if scheme.lower() != b"bearer" or not credentials:
                return None
            return credentials.decode("latin-1")
    return None


def _content_type_ok(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == _JSON or (
                media.startswith(b"application/") and media.endswith(b"+json")
            )
    return True  # absent: judged by the body


def _max_tokens_field(model: str) -> str:
    return "max_completion_tokens" if _COMPLETION_TOKENS_MODELS.match(model) else "max_tokens"


def _optional_int(body: dict[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidRequest(f"'{field}' must be an integer", param=field)
    if not low <= value <= high:
        raise InvalidRequest(f"'{field}' must be between {low} and {high}", param=field)
    return value


def _validate(body: Any) -> None:
    """Just enough shape to count and forward safely; the upstream judges the rest."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{index}] must be an object", param=f"messages.{index}")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}",
                param=f"messages.{index}.role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"messages[{index}].content must be a string or an array",
                param=f"messages.{index}.content",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    _optional_int(body, "n", 1, 128)


@dataclass(slots=True)
class Admitted:
    """A request that passed admission, ready to forward."""

    body: dict[str, Any]
    upstream_body: bytes
    stream: bool
    client_wants_usage: bool
    decision: Decision
    injected_max: bool
    response_headers: list[tuple[bytes, bytes]]


class Downstream:
    """The client side of an exchange: raw ASGI messages, one send per relayed read."""

    __slots__ = ("_send", "ended", "first_byte_at", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.ended = False
        self.first_byte_at: float | None = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        if data and self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        self.ended = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})


async def _watch_disconnect(receive: Receive, clock: UpstreamClock) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            clock.abort()
            return


class _Choice:
    __slots__ = ("counter", "cut", "finish_reason")

    def __init__(self, counter: tokens.OutputCounter) -> None:
        self.counter = counter
        self.cut = False
        self.finish_reason: str | None = None


class _Output:
    """Output accounting for one response, per choice (the limit is per choice,
    as ``max_tokens`` is): counts what is relayed and trims at the cut-off."""

    __slots__ = ("_choices", "_cut_at", "_encoding", "any_cut")

    def __init__(self, encoding: Any, cut_at: int | None) -> None:
        self._encoding = encoding
        self._cut_at = cut_at
        self._choices: dict[int, _Choice] = {}
        self.any_cut = False

    def choice(self, index: int) -> _Choice:
        state = self._choices.get(index)
        if state is None:
            counter = tokens.OutputCounter(self._encoding, self._cut_at)
            state = self._choices[index] = _Choice(counter)
        return state

    @property
    def tokens(self) -> int:
        return sum(state.counter.count for state in self._choices.values())

    @property
    def all_finished(self) -> bool:
        return bool(self._choices) and all(
            state.cut or state.finish_reason is not None for state in self._choices.values()
        )

    def finish_reasons(self) -> set[str]:
        return {state.finish_reason for state in self._choices.values() if state.finish_reason}

    def take_message(self, state: _Choice, message: dict[str, Any]) -> bool:
        """Count a message (or a delta) of one choice; trim it where the output
        reaches the limit. Returns whether the message was changed."""
        if state.cut:
            return _clear_message(message)
        counter = state.counter
        for field in ("content", "refusal"):
            text = message.get(field)
            if isinstance(text, str) and text:
                kept, reached = counter.feed(text, field)
                if reached:
                    state.cut = self.any_cut = True
                    message[field] = kept
                    _drop_after(message, field)
                    return True
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                arguments = function.get("arguments") if isinstance(function, dict) else None
                if isinstance(arguments, str) and arguments:
                    # Stream deltas name their call by "index"; whole messages by position.
                    index = call.get("index", position)
                    kept, reached = counter.feed(arguments, ("tool", index))
                    if reached:
                        state.cut = self.any_cut = True
                        function["arguments"] = kept  # type: ignore[index]
                        del calls[position + 1 :]
                        return True
        legacy = message.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            kept, reached = counter.feed(legacy["arguments"], "function_call")
            if reached:
                state.cut = self.any_cut = True
                legacy["arguments"] = kept
                return True
        return False


def _drop_after(message: dict[str, Any], field: str) -> None:
    if field == "content":
        message.pop("refusal", None)
    message.pop("tool_calls", None)
    message.pop("function_call", None)


def _clear_message(message: dict[str, Any]) -> bool:
    changed = False
    for field in ("content", "refusal", "tool_calls", "function_call"):
        if message.get(field):
            message.pop(field)
            changed = True
    return changed


class ProxyService:
    """Everything the proxy endpoints need, built once per process."""

    def __init__(
        self,
        *,
        settings: Settings,
        keys: KeyCache,
        hasher: TokenHasher,
        encoders: tokens.Encoders,
        session: aiohttp.ClientSession,
        recorder: UsageRecorder,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.hasher = hasher
        self.encoders = encoders
        self.session = session
        self.recorder = recorder
        self.metrics = metrics
        self.adapters: dict[str, Adapter] = {
            "openai": OpenAIAdapter(),
            "anthropic": AnthropicAdapter(),
        }

    # -- authentication --------------------------------------------------------

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> ResolvedKey:
        token = bearer_token(headers)
        key = self.keys.get(self.hasher.hash(token)) if token else None
        if key is None:
            self.metrics.bad_token()
            raise InvalidApiKey()
        return key

    # -- GET /v1/models --------------------------------------------------------

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            key = self.authenticate(scope["headers"])
            if not key.enabled:
                raise KeyDisabled()
        except ProxyError as exc:
            await _send_error(scope, receive, send, exc, [])
            return
        body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": key.model,
                        "object": "model",
                        "created": 0,
                        "owned_by": key.provider_name,
                    }
                ],
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # -- POST /v1/chat/completions ---------------------------------------------

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id: str = scope.get("state", {}).get("request_id", "-")
        try:
            key = self.authenticate(scope["headers"])
        except ProxyError as exc:
            await _send_error(scope, receive, send, exc, [])
            return
        limits = key.limits
        entry = UsageEntry(
            request_id=request_id,
            api_key_id=key.id,
            alias=key.alias,
            provider=key.provider_name,
            model=key.model,
            outcome="rejected",
            status_code=500,
            input_limit=limits.input_limit,
            output_limit=limits.output_limit,
            usage_limit=limits.usage_limit,
        )
        downstream = Downstream(send)
        try:
            try:
                admitted = await self._admit(scope, receive, key, entry)
            except ProxyError as exc:
                entry.outcome, entry.status_code, entry.error_code = (
                    "rejected",
                    exc.status_code,
                    exc.code,
                )
                await _send_error(scope, receive, send, exc, list(_key_headers(key, entry)))
                return
            await self._forward(key, admitted, entry, receive, downstream)
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
            self.recorder.record(entry)

    async def _admit(
        self, scope: Scope, receive: Receive, key: ResolvedKey, entry: UsageEntry
    ) -> Admitted:
        if not key.enabled:
            raise KeyDisabled()
        if key.key_code is None:
            raise KeyUnusable()
        if key.provider_kind not in self.adapters:
            raise UnsupportedProvider()
        headers = scope["headers"]
        if not _content_type_ok(headers):
            raise UnsupportedContentType()
        raw = await _read_body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidJson() from None
        _validate(body)
        model = body.get("model")
        if model is None:
            body["model"] = key.model
            modified = True
        elif model != key.model:
            raise ModelNotAllowed(f"This key may use model '{key.model}' only", param="model")
        else:
            modified = False
        stream = body.get("stream") is True
        entry.stream = stream
        requested = [
            _optional_int(body, field, 1, MAX_OUTPUT_TOKENS)
            for field in ("max_tokens", "max_completion_tokens")
        ]
        given = [value for value in requested if value is not None]
        requested_max = max(given) if given else None

        counted = await tokens.count_chat_input_async(
            body,
            await self.encoders.aget(key.encoding),
            max_chars=self.settings.max_tokenize_chars,
            executor=self.encoders.executor,
        )
        input_tokens = entry.input_tokens = counted.tokens
        decision = decide(key.limits, input_tokens, requested_max, input_exact=counted.exact)
        entry.input_limit_exceeded = decision.input_exceeded
        entry.output_limit_exceeded = decision.output_exceeded
        if decision.rejection is not None:
            if decision.rejection == INPUT_LIMIT_EXCEEDED:
                counted_as = (
                    f"{input_tokens}"
                    if counted.exact
                    else f"at least {input_tokens} (too large to count exactly)"
                )
                raise InputTokenLimitExceeded(
                    f"The input is {counted_as} tokens; this key allows "
                    f"{key.limits.input_limit} per request",
                    param="messages",
                )
            raise OutputTokenLimitExceeded(
                f"The request asks for up to {requested_max} output tokens; this key "
                f"allows {key.limits.output_limit}",
                param="max_completion_tokens" if requested[1] is not None else "max_tokens",
            )
        injected = False
        if decision.inject_max_tokens is not None:
            body[_max_tokens_field(key.model)] = decision.inject_max_tokens
            modified = injected = True
        client_wants_usage = False
        if stream:
            options = body.get("stream_options")
            client_wants_usage = bool(options and options.get("include_usage"))
            if not client_wants_usage:
                body["stream_options"] = {**(options or {}), "include_usage": True}
                modified = True
        adapter = self.adapters[key.provider_kind]
        response_headers = list(_key_headers(key, entry))
        exceeded = decision.exceeded_header()
        if exceeded:
            response_headers.append((b"x-aigw-limit-exceeded", exceeded.encode()))
        return Admitted(
            body=body,
            upstream_body=adapter.encode_request(body, raw, modified),
            stream=stream,
            client_wants_usage=client_wants_usage,
            decision=decision,
            injected_max=injected,
            response_headers=response_headers,
        )

    # -- upstream ---------------------------------------------------------------

    async def _open(
        self, key: ResolvedKey, admitted: Admitted, request_id: str
    ) -> aiohttp.ClientResponse:
        if not key.upstream_allowed:
            raise UpstreamRefusedAddress()
        adapter = self.adapters[key.provider_kind]
        url = adapter.url(key)
        headers = adapter.headers(key, request_id, admitted.stream)
        try:
            return await self.session.post(url, data=admitted.upstream_body, headers=headers)
        except aiohttp.ClientError as exc:
            # One retry, and only when the upstream never saw the request.
            if not is_retryable_before_send(exc):
                raise map_client_error(exc) from None
        try:
            return await self.session.post(url, data=admitted.upstream_body, headers=headers)
        except aiohttp.ClientError as exc:
            raise map_client_error(exc) from None

    async def _forward(
        self,
        key: ResolvedKey,
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
        response: aiohttp.ClientResponse | None = None
        complete = False
        output = _Output(await self.encoders.aget(key.encoding), admitted.decision.cut_output_at)
        try:
            try:
                async with clock:
                    response = await self._open(key, admitted, entry.request_id)
                    if response.status >= 400:
                        raise await _status_error(response, clock)
                    if admitted.stream:
                        complete = await self._relay_stream(
                            key, admitted, entry, response, clock, downstream, output
                        )
                    else:
                        complete = await self._relay_once(
                            key, admitted, entry, response, clock, downstream, output
                        )
            except (aiohttp.ClientError, OSError) as exc:
                raise map_client_error(exc) from None
        except UpstreamError as exc:
            _redact_key_code(exc, key.key_code)
            entry.outcome = "upstream_error"
            entry.output_tokens = output.tokens
            if downstream.started:
                entry.status_code = 200
                entry.error_code = exc.code
                await downstream.end(_error_event(exc.code, exc.message))
            else:
                await self._answer_upstream_error(exc, key, admitted, entry, downstream)
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
                        _error_event("gateway_shutdown", "The gateway is shutting down")
                    )
            raise
        except Exception as exc:
            # A bug must not become a traceback for the client or a half-open stream.
            log.exception("proxy failure relaying %s", type(exc).__name__)
            entry.outcome, entry.error_code = "upstream_error", "internal_error"
            entry.output_tokens = output.tokens
            if downstream.started:
                entry.status_code = 200
                await downstream.end(_error_event("internal_error", "The gateway failed"))
            else:
                entry.status_code = 500
                await self._answer_upstream_error(
                    UpstreamError("The gateway failed"), key, admitted, entry, downstream, 500
                )
        finally:
            watch_timer.cancel()
            for task in watcher:
                task.cancel()
            if response is not None:
                await _finish_upstream(response, complete)
        if key.limits.usage_limit == "use_anyway" and output_exceeded(
            key.limits, entry.output_tokens
        ):
            entry.output_limit_exceeded = True

    async def _answer_upstream_error(
        self,
        exc: UpstreamError,
        key: ResolvedKey,
        admitted: Admitted,
        entry: UsageEntry,
        downstream: Downstream,
        status: int | None = None,
    ) -> None:
        headers = admitted.response_headers
        if isinstance(exc, UpstreamStatusError) and 400 <= exc.upstream_status < 500:
            # 4xx pass through, in OpenAI's envelope (wrapped if the upstream used another).
            adapter = self.adapters[key.provider_kind]
            body, code = adapter.error_envelope(exc.body, exc.upstream_status)
            entry.status_code, entry.error_code = exc.upstream_status, code
            relayed = [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in exc.headers.items()
            ]
            await downstream.start(
                exc.upstream_status,
                [
                    (b"content-type", _JSON),
                    (b"content-length", str(len(body)).encode()),
                    *relayed,
                    *headers,
                ],
            )
            await downstream.end(body)
            return
        status = status or exc.status_code
        code = entry.error_code if status == 500 else exc.code
        entry.status_code, entry.error_code = status, code
        error_type = "server_error" if status == 500 else "upstream_error"
        body = orjson.dumps(
            {"error": {"message": exc.message, "type": error_type, "param": None, "code": code}}
        )
        await downstream.start(
            status,
            [(b"content-type", _JSON), (b"content-length", str(len(body)).encode()), *headers],
        )
        await downstream.end(body)

    async def _relay_once(
        self,
        key: ResolvedKey,
        admitted: Admitted,
        entry: UsageEntry,
        response: aiohttp.ClientResponse,
        clock: UpstreamClock,
        downstream: Downstream,
        output: _Output,
    ) -> bool:
        adapter = self.adapters[key.provider_kind]
        parts = []
        read = response.content.readany
        while True:
            chunk = await read()
            if not chunk:
                break
            clock.event()
            parts.append(chunk)
        raw = b"".join(parts)
        completion = adapter.parse_response(raw)
        changed = not adapter.relays_raw
        choices = completion.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                state = output.choice(index if isinstance(index, int) else 0)
                message = choice.get("message")
                if isinstance(message, dict) and output.take_message(state, message):
                    changed = True
                if state.cut:
                    choice["finish_reason"] = "length"
                state.finish_reason = choice.get("finish_reason")
        usage = completion.get("usage")
        _take_upstream_usage(entry, usage)
        entry.output_tokens = output.tokens
        if output.any_cut and isinstance(usage, dict):
            usage["completion_tokens"] = entry.output_tokens
            if isinstance(usage.get("prompt_tokens"), int):
                usage["total_tokens"] = usage["prompt_tokens"] + entry.output_tokens
        entry.outcome = self._outcome(admitted, output)
        entry.status_code = 200
        headers = admitted.response_headers
        if key.limits.usage_limit == "use_anyway" and output_exceeded(
            key.limits, entry.output_tokens
        ):
            entry.output_limit_exceeded = True
            headers = _with_exceeded(headers, admitted.decision)
        body = orjson.dumps(completion) if changed else raw
        await downstream.start(
            200,
            [(b"content-type", _JSON), (b"content-length", str(len(body)).encode()), *headers],
        )
        await downstream.end(body)
        return True

    @staticmethod
    def _outcome(admitted: Admitted, output: _Output) -> str:
        if output.any_cut or (admitted.injected_max and "length" in output.finish_reasons()):
            return "truncated"
        return "completed"

    async def _relay_stream(
        self,
        key: ResolvedKey,
        admitted: Admitted,
        entry: UsageEntry,
        response: aiohttp.ClientResponse,
        clock: UpstreamClock,
        downstream: Downstream,
        output: _Output,
    ) -> bool:
        """Relay SSE until ``[DONE]`` (or the cut-off); returns whether the upstream
        body was read to its end (the connection can be reused)."""
        translator = self.adapters[key.provider_kind].new_stream()
        decoder = SSEDecoder()
        read = response.content.readany
        wants_usage = admitted.client_wants_usage
        last_chunk: dict[str, Any] | None = None
        finished = False
        while not finished:
            data = await read()
            if not data:
                break
            events = decoder.feed(data)
            if not events:
                continue
            out: list[bytes] = []
            try:
                for event in events:
                    for item in translator.items(event):
                        if item.done:
                            finished = True
                            break
                        chunk = item.chunk
                        if chunk is None:
                            out.append(item.raw or b"")  # a comment: relayed, not progress
                            continue
                        clock.event()
                        relay = self._take_chunk(chunk, item, entry, output, wants_usage)
                        last_chunk = chunk
                        if relay:
                            out.append(relay)
                        if output.any_cut and output.all_finished:
                            finished = True
                            break
                    if finished:
                        break
            except UpstreamError:
                # Relay what came before the failure, then let it end the stream.
                if out:
                    if not downstream.started:
                        await downstream.start(200, [*_SSE_HEADERS, *admitted.response_headers])
                    await downstream.write(b"".join(out))
                raise
            if output.any_cut and output.all_finished:
                entry.output_tokens = output.tokens
                out.append(self._cut_tail(admitted, entry, output, last_chunk))
                out.append(DONE_EVENT)
            elif finished:
                out.append(DONE_EVENT)
            if out:
                payload = b"".join(out)
                if not downstream.started:
                    await downstream.start(200, [*_SSE_HEADERS, *admitted.response_headers])
                if finished:
                    entry.output_tokens = output.tokens
                    entry.outcome = self._outcome(admitted, output)
                    entry.status_code = 200
                    await downstream.end(payload)
                    return not output.any_cut
                await downstream.write(payload)
        # The upstream ended without [DONE].
        for event in decoder.close():
            if event.data == b"[DONE]":
                break
        entry.output_tokens = output.tokens
        if output.all_finished:
            # Lenient: every choice finished, only the end marker is missing.
            if not downstream.started:
                await downstream.start(200, [*_SSE_HEADERS, *admitted.response_headers])
            entry.outcome = self._outcome(admitted, output)
            entry.status_code = 200
            await downstream.end(DONE_EVENT)
            return True
        raise UpstreamConnectionLost("The upstream stream ended before it was complete")

    def _take_chunk(
        self,
        chunk: dict[str, Any],
        item: StreamItem,
        entry: UsageEntry,
        output: _Output,
        wants_usage: bool,
    ) -> bytes | None:
        """Account one chunk; returns the bytes to relay (``None``: drop it)."""
        if "error" in chunk and not chunk.get("choices"):
            error = chunk.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            raise UpstreamError(
                f"The upstream provider failed mid-stream: {str(message)[:500]}"
                if message
                else None
            )
        changed = item.raw is None
        choices = chunk.get("choices")
        if choices:
            if not isinstance(choices, list):
                raise UpstreamProtocolError()
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                state = output.choice(index if isinstance(index, int) else 0)
                was_cut = state.cut
                delta = choice.get("delta")
                if isinstance(delta, dict) and output.take_message(state, delta):
                    changed = True
                if state.cut:
                    if choice.get("finish_reason") is not None:
                        choice["finish_reason"] = None
                        changed = True
                    if was_cut and not delta:
                        continue
                else:
                    reason = choice.get("finish_reason")
                    if reason is not None:
                        state.finish_reason = reason
        usage = chunk.get("usage")
        if usage:
            _take_upstream_usage(entry, usage)
            if not wants_usage:
                if not choices:
                    return None
                del chunk["usage"]
                changed = True
        if changed:
            return encode_json(chunk)
        return item.raw

    def _cut_tail(
        self,
        admitted: Admitted,
        entry: UsageEntry,
        output: _Output,
        last_chunk: dict[str, Any] | None,
    ) -> bytes:
        """The events that end a stream the gateway cut: a ``finish_reason: "length"``
        chunk per cut choice and, when the client asked for it, a usage chunk."""
        base = {
            "id": (last_chunk or {}).get("id", "chatcmpl-aigw"),
            "object": "chat.completion.chunk",
            "created": (last_chunk or {}).get("created", int(time.time())),
            "model": (last_chunk or {}).get("model", admitted.body.get("model")),
        }
        if last_chunk and "system_fingerprint" in last_chunk:
            base["system_fingerprint"] = last_chunk["system_fingerprint"]
        choices: list[dict[str, Any]] = [
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": "length"}
            for index, state in sorted(output._choices.items())
            if state.cut
        ]
        parts = [encode_json({**base, "choices": choices})]
        if admitted.client_wants_usage:
            completion_tokens = output.tokens
            parts.append(
                encode_json(
                    {
                        **base,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": entry.input_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": entry.input_tokens + completion_tokens,
                        },
                    }
                )
            )
        return b"".join(parts)


def _take_upstream_usage(entry: UsageEntry, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if type(prompt) is int:
        entry.upstream_input_tokens = prompt
    if type(completion) is int:
        entry.upstream_output_tokens = completion


def _with_exceeded(
    headers: list[tuple[bytes, bytes]], decision: Decision
) -> list[tuple[bytes, bytes]]:
    value = decision.exceeded_header(output_exceeded=True)
    assert value is not None
    kept = [(name, val) for name, val in headers if name != b"x-aigw-limit-exceeded"]
    return [*kept, (b"x-aigw-limit-exceeded", value.encode())]


def _key_headers(key: ResolvedKey, entry: UsageEntry) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"x-aigw-input-tokens", str(entry.input_tokens).encode()), *key.limit_headers)


def _redact_key_code(exc: UpstreamError, key_code: str | None) -> None:
    """Some upstreams repeat the API key they were sent in an error message; the
    client holds a gateway token, not that secret, so it is masked before relaying."""
    if not key_code:
        return
    masked = mask_secret(key_code)
    exc.message = exc.message.replace(key_code, masked)
    if isinstance(exc, UpstreamStatusError):
        for spelling in {key_code.encode(), orjson.dumps(key_code)[1:-1]}:
            exc.body = exc.body.replace(spelling, masked.encode())


def _error_event(code: str, message: str) -> bytes:
    return encode_json(
        {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    )


async def _status_error(response: aiohttp.ClientResponse, clock: UpstreamClock) -> UpstreamError:
    parts: list[bytes] = []
    size = 0
    while size < _MAX_ERROR_BODY:
        chunk = await response.content.readany()
        if not chunk:
            break
        clock.event()
        parts.append(chunk)
        size += len(chunk)
    relayed = {
        name: value
        for name, value in response.headers.items()
        if name.lower().encode().startswith(_RELAYED_HEADER_PREFIXES)
    }
    return UpstreamStatusError(response.status, b"".join(parts)[:_MAX_ERROR_BODY], relayed)


async def _finish_upstream(response: aiohttp.ClientResponse, complete: bool) -> None:
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


async def _read_body(receive: Receive) -> bytes:
    try:
        return await _receive_body(receive)
    except HTTPException as exc:
        # The size-limit middleware stops a streamed body mid-way from receive().
        if exc.status_code == 413:
            raise BodyTooLarge(str(exc.detail)) from None
        raise


async def _receive_body(receive: Receive) -> bytes:
    message: Message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    exc: ProxyError,
    headers: list[tuple[bytes, bytes]],
) -> None:
    response = openai_error_response(
        exc.status_code, exc.detail, code=exc.code, error_type=exc.openai_type, param=exc.param
    )
    if isinstance(exc, InvalidApiKey):
        response.headers["www-authenticate"] = "Bearer"
    elif isinstance(exc, BodyTooLarge):
        response.headers["connection"] = "close"  # rather than drain a huge body
    response.raw_headers.extend(headers)
    await response(scope, receive, send)

"""The life of a request to the ``/v1`` endpoints beyond Chat Completions.

``POST /v1/responses`` and ``POST /v1/embeddings`` share the chat endpoint's
stages (authenticate → admit → forward → record, see :mod:`aigw.proxy.pipeline`)
and its parts — the key cache, :mod:`aigw.proxy.admission`'s body reading,
:func:`aigw.proxy.policy.decide`, :mod:`aigw.proxy.upstream`'s client, time
bounds and failure mapping, :class:`aigw.proxy.downstream.Downstream` — but speak
another wire format. An :class:`Endpoint` supplies what differs: its own
admission (what to count, which field bounds the output) and its own relay.
Both go to ``openai``-kind providers only: other kinds have no such API and the
gateway does not translate these endpoints (a 400 naming the kind says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson
from starlette.types import Receive, Scope, Send

from aigw.errors import AigwError, UnsupportedMediaType, openai_error_body, openai_error_response
from aigw.proxy.adapters.openai import OpenAIAdapter, _endpoint
from aigw.proxy.admission import key_headers
from aigw.proxy.body import Names, content_type_ok, off_loop, parse_unambiguous, read_body
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import (
    ClientGone,
    InvalidApiKey,
    InvalidRequest,
    KeyDisabled,
    KeyUnusable,
    ModelNotAllowed,
    UpstreamError,
    UpstreamRefusedAddress,
    UpstreamStatusError,
    error_event,
)
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import Decision, flags_output
from aigw.proxy.records import new_entry
from aigw.proxy.upstream import (
    UpstreamClock,
    finish_upstream,
    map_client_error,
    post_upstream,
    read_status_error,
    redact_key_code,
)
from aigw.usage.recorder import UsageEntry

if TYPE_CHECKING:
    from aigw.proxy.pipeline import Pipeline

log = logging.getLogger("aigw.proxy")

_CLIENT_CLOSED_REQUEST = 499
_WATCH_AFTER = 0.02
_OPENAI = OpenAIAdapter()


class EndpointNotSupported(InvalidRequest):
    code = "endpoint_not_supported"
    title = "This endpoint is not available for the key's provider kind"


class ModelNotFound(AigwError):
    status_code = 404
    code = "model_not_found"
    title = "The model does not exist or this key may not use it"
    openai_type = "invalid_request_error"


class UnknownEndpoint(AigwError):
    status_code = 404
    code = "not_found"
    title = "Unknown endpoint"
    openai_type = "invalid_request_error"

    def __init__(self, detail: str, *, allow: str | None = None) -> None:
        super().__init__(detail, headers={"Allow": allow} if allow else None)
        if allow:
            self.status_code = 405
            self.code = "method_not_allowed"


#: What ``/v1`` serves, as (method, path); kept in step with aigw.proxy.router.
SERVED = (
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
)
_SERVED_TEXT = ", ".join(f"{method} {path}" for method, path in SERVED)


def unknown_endpoint(scope: Scope) -> UnknownEndpoint:
    """The error for a ``/v1`` request no route serves: 405 with ``Allow`` for a served
    path asked with another method, else 404; both list what is served."""
    path = scope.get("path", "")
    pattern = "/v1/models/{model}" if path.startswith("/v1/models/") else path.rstrip("/")
    allowed = sorted({method for method, served in SERVED if served == pattern})
    if allowed:
        return UnknownEndpoint(
            f"{pattern} accepts {' and '.join(allowed)} only. This gateway serves: " + _SERVED_TEXT,
            allow=", ".join(allowed),
        )
    return UnknownEndpoint("Unknown endpoint. This gateway serves: " + _SERVED_TEXT)


@dataclass(slots=True)
class Prepared:
    """A request that passed an endpoint's admission, ready to forward."""

    body: dict[str, Any]
    upstream_body: bytes
    stream: bool
    decision: Decision
    injected_max: bool
    response_headers: list[tuple[bytes, bytes]]
    # The input refers to context the gateway cannot see (its count is partial).
    uncountable: bool = False


class EndpointRelay(Protocol):
    async def whole(self, response: aiohttp.ClientResponse) -> bool: ...

    async def stream(self, response: aiohttp.ClientResponse) -> bool: ...

    @property
    def output_tokens(self) -> int: ...


class Endpoint(Protocol):
    #: ``usage_records.endpoint``: ``responses``, ``embeddings``.
    name: str
    #: Appended to the provider's ``base_url``.
    path: str
    #: The member names it reads: a case variant of one, or a duplicate name
    #: anywhere, is refused (400 ``ambiguous_field``).
    names: Names

    async def admit(
        self,
        pipeline: Pipeline,
        raw: bytes,
        body: dict[str, Any],
        key: ResolvedKey,
        entry: UsageEntry,
    ) -> Prepared: ...

    def relay(
        self,
        prepared: Prepared,
        key: ResolvedKey,
        entry: UsageEntry,
        downstream: Downstream,
        clock: UpstreamClock,
        encoding: Any,
    ) -> EndpointRelay: ...


async def read_request(
    headers: list[tuple[bytes, bytes]],
    receive: Receive,
    key: ResolvedKey,
    endpoint: Endpoint,
    executor: Executor | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The checks every endpoint makes before its own: the key is usable, its
    provider kind serves *endpoint*, and the body is a JSON object with no
    duplicate member name and no case variant of a name *endpoint* reads
    (returned as received and parsed; parsed in *executor* when large)."""
    if not key.enabled:
        raise KeyDisabled()
    if key.key_code is None:
        raise KeyUnusable()
    if key.provider_kind != "openai":
        raise EndpointNotSupported(
            f"POST /v1/{endpoint.name} is not available with this key: its provider is of "
            f"kind '{key.provider_kind}', which the gateway serves through "
            "POST /v1/chat/completions only"
        )
    if not content_type_ok(headers):
        raise UnsupportedMediaType()
    raw = await read_body(receive)
    body = await off_loop(raw, executor, parse_unambiguous, raw, endpoint.names)
    return raw, body


def apply_model_rule(body: dict[str, Any], key: ResolvedKey) -> bool:
    """Fill in the key's model when omitted (returns True: the body changed);
    refuse any other model."""
    model = body.get("model")
    if model is None:
        body["model"] = key.model
        return True
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    if model != key.model:
        raise ModelNotAllowed(f"This key may use model '{key.model}' only", param="model")
    return False


async def encode_off_loop(raw: bytes, executor: Executor | None, body: dict[str, Any]) -> bytes:
    """:func:`encode_body`, off the event loop for a body past the inline size."""
    return await off_loop(raw, executor, encode_body, body)


def encode_body(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson writes at most 255 levels but reads up to 1024
        raise InvalidRequest("The request body is nested too deeply") from None


def response_headers(
    key: ResolvedKey, entry: UsageEntry, decision: Decision
) -> list[tuple[bytes, bytes]]:
    headers = key_headers(key, entry)
    exceeded = decision.exceeded_header()
    if exceeded:
        headers.append((b"x-aigw-limit-exceeded", exceeded.encode()))
    return headers


def with_output_flag(
    headers: list[tuple[bytes, bytes]], decision: Decision
) -> list[tuple[bytes, bytes]]:
    """*headers* with ``x-aigw-limit-exceeded`` saying the output went over too."""
    value = decision.exceeded_header(output_exceeded=True)
    assert value is not None
    kept = [(name, val) for name, val in headers if name != b"x-aigw-limit-exceeded"]
    return [*kept, (b"x-aigw-limit-exceeded", value.encode())]


def upstream_usage(entry: UsageEntry, usage: Any, input_field: str, output_field: str) -> None:
    if not isinstance(usage, Mapping):
        return
    given_in, given_out = usage.get(input_field), usage.get(output_field)
    if type(given_in) is int:
        entry.upstream_input_tokens = given_in
    if type(given_out) is int:
        entry.upstream_output_tokens = given_out


async def _send_error(
    scope: Scope, receive: Receive, send: Send, exc: AigwError, headers: list[tuple[bytes, bytes]]
) -> None:
    response = openai_error_response(
        exc.status_code, exc.detail, code=exc.code, error_type=exc.openai_type, param=exc.param
    )
    if isinstance(exc, InvalidApiKey):
        response.headers["www-authenticate"] = "Bearer"
    elif exc.status_code == 413:
        response.headers["connection"] = "close"  # rather than drain a huge body
    response.raw_headers.extend(headers)
    await response(scope, receive, send)


async def _watch_disconnect(receive: Receive, clock: UpstreamClock) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            clock.abort()
            return


async def run(
    pipeline: Pipeline, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one request to *endpoint*; records its usage whatever happens."""
    started = time.perf_counter()
    try:
        key = pipeline.authenticate(scope["headers"])
    except AigwError as exc:
        await _send_error(scope, receive, send, exc, [])
        return
    entry = new_entry(scope, key, endpoint.name)
    downstream = Downstream(send, pipeline.settings.client_write_timeout)
    try:
        try:
            raw, body = await read_request(
                scope["headers"], receive, key, endpoint, pipeline.encoders.executor
            )
            prepared = await endpoint.admit(pipeline, raw, body, key, entry)
        except AigwError as exc:
            entry.outcome, entry.status_code, entry.error_code = (
                "rejected",
                exc.status_code,
                exc.code,
            )
            await _send_error(scope, receive, send, exc, key_headers(key, entry))
            return
        await _forward(pipeline, endpoint, key, prepared, entry, receive, downstream)
    except ClientGone:
        entry.outcome = "client_disconnected"
        entry.status_code = 200 if downstream.started else _CLIENT_CLOSED_REQUEST
    except asyncio.CancelledError:
        entry.outcome = (
            "interrupted" if entry.error_code == "gateway_shutdown" else "client_disconnected"
        )
        entry.status_code = 200 if downstream.started else _CLIENT_CLOSED_REQUEST
        raise
    except Exception:
        log.exception("proxy failure")
        entry.outcome, entry.error_code = "upstream_error", "internal_error"
        entry.status_code = 500
        raise
    finally:
        entry.latency_ms = (time.perf_counter() - started) * 1000.0
        if downstream.first_byte_at is not None:
            entry.ttfb_ms = (downstream.first_byte_at - started) * 1000.0
        pipeline.recorder.record(entry)


async def _forward(
    pipeline: Pipeline,
    endpoint: Endpoint,
    key: ResolvedKey,
    prepared: Prepared,
    entry: UsageEntry,
    receive: Receive,
    downstream: Downstream,
) -> None:
    clock = UpstreamClock(pipeline.settings)
    loop = asyncio.get_running_loop()
    watcher: list[asyncio.Task[None]] = []
    watch_timer = loop.call_later(
        _WATCH_AFTER,
        lambda: watcher.append(loop.create_task(_watch_disconnect(receive, clock))),
    )
    encoding = await pipeline.encoders.aget(key.encoding)
    relay = endpoint.relay(prepared, key, entry, downstream, clock, encoding)
    response: aiohttp.ClientResponse | None = None
    complete = False
    try:
        try:
            async with clock:
                if not key.upstream_allowed:
                    raise UpstreamRefusedAddress()
                headers = _OPENAI.headers(key, entry.request_id, prepared.stream)
                url = _endpoint(key.base_url, endpoint.path)
                response = await post_upstream(
                    pipeline.session, url, prepared.upstream_body, headers
                )
                if response.status >= 400:
                    raise await read_status_error(response, clock)
                if prepared.stream:
                    complete = await relay.stream(response)
                else:
                    complete = await relay.whole(response)
        except (aiohttp.ClientError, OSError) as exc:
            raise map_client_error(exc) from None
    except UpstreamError as exc:
        redact_key_code(exc, key.key_code)
        await fail(exc, entry, downstream, prepared.response_headers, relay.output_tokens)
    except ClientGone:
        entry.output_tokens = relay.output_tokens
        raise
    except asyncio.CancelledError:
        entry.output_tokens = relay.output_tokens
        if downstream.started and not downstream.ended:
            entry.error_code = "gateway_shutdown"
            with contextlib.suppress(Exception):
                await downstream.end(
                    error_event("gateway_shutdown", "The gateway is shutting down")
                )
        raise
    except Exception as exc:
        log.exception("proxy failure relaying %s", type(exc).__name__)
        await fail(
            AigwError("The gateway failed"),
            entry,
            downstream,
            prepared.response_headers,
            relay.output_tokens,
        )
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
    entry: UsageEntry,
    downstream: Downstream,
    headers: list[tuple[bytes, bytes]],
    output_tokens: int,
) -> None:
    """End the exchange with *exc*: a final error event when the answer has started,
    else an answer in OpenAI's envelope (an upstream 4xx passes through)."""
    entry.outcome = "upstream_error"
    entry.output_tokens = output_tokens
    entry.error_code = exc.code
    if downstream.started:
        entry.status_code = 200
        if not downstream.ended:
            await downstream.end(error_event(exc.code, exc.detail))
        return
    if isinstance(exc, UpstreamStatusError) and 400 <= exc.upstream_status < 500:
        body, code = _OPENAI.error_envelope(exc.body, exc.upstream_status)
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

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

import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.types import Receive, Scope, Send

from aigw.errors import AigwError, UnsupportedMediaType
from aigw.proxy.adapters.openai import OpenAIAdapter, _endpoint
from aigw.proxy.admission import key_headers
from aigw.proxy.body import Names, content_type_ok, off_loop, parse_unambiguous, read_body
from aigw.proxy.counting.offload import CountingPool
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import InvalidRequest, KeyDisabled, KeyUnusable, ModelNotAllowed
from aigw.proxy.forward import AnswerRelay, Recorded, UpstreamCall, forward, send_error
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import Decision
from aigw.proxy.records import new_entry
from aigw.proxy.upstream import UpstreamClock
from aigw.usage.entry import UsageEntry

if TYPE_CHECKING:
    from aigw.proxy.pipeline import Pipeline

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


class Endpoint(Protocol):
    #: ``usage_records.endpoint``: ``responses``, ``embeddings``.
    name: str
    #: Appended to the provider's ``base_url``.
    path: str
    #: The member names it reads: a case variant of one, or a duplicate name
    #: anywhere, is refused (400 ``ambiguous_field``).
    names: Names
    #: Whether its admission takes a large body unparsed, for a worker process
    #: (:mod:`aigw.proxy.counting.workers`) to parse, check and count.
    offloaded: bool

    async def admit(
        self,
        pipeline: Pipeline,
        raw: bytes,
        body: dict[str, Any] | None,
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
    ) -> AnswerRelay: ...


async def read_request(
    headers: list[tuple[bytes, bytes]],
    receive: Receive,
    key: ResolvedKey,
    endpoint: Endpoint,
    executor: Executor | None = None,
    pool: CountingPool | None = None,
) -> tuple[bytes, dict[str, Any] | None]:
    """The checks every endpoint makes before its own: the key is usable, its
    provider kind serves *endpoint*, and the body is a JSON object with no
    duplicate member name and no case variant of a name *endpoint* reads
    (returned as received and parsed; parsed in *executor* when large). A body
    *pool* takes, for an endpoint that is ``offloaded``, is returned unparsed
    (``None``): its admission has a worker parse and check it."""
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
    if endpoint.offloaded and pool is not None and pool.takes(raw):
        return raw, None
    body = await off_loop(raw, executor, parse_unambiguous, raw, endpoint.names)
    return raw, body


def apply_model_rule(body: dict[str, Any], key: ResolvedKey) -> bool:
    """Fill in the key's model when omitted (returns True: the body changed);
    refuse any other model."""
    if check_model(body, key.model):
        body["model"] = key.model
        return True
    return False


def check_model(body: Mapping[str, Any], model: str) -> bool:
    """Whether *body* omits its model (True: the key's *model* is to be filled
    in); 400 for any model but *model*."""
    given = body.get("model")
    if given is None:
        return True
    if not isinstance(given, str):
        raise InvalidRequest("'model' must be a string", param="model")
    if given != model:
        raise ModelNotAllowed(f"This key may use model '{model}' only", param="model")
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


async def run(
    pipeline: Pipeline, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one request to *endpoint*; records its usage whatever happens."""
    started = time.perf_counter()
    try:
        key = pipeline.authenticate(scope["headers"])
    except AigwError as exc:
        await send_error(scope, receive, send, exc, [])
        return
    entry = new_entry(scope, key, endpoint.name)
    downstream = Downstream(send, pipeline.settings.client_write_timeout)
    async with Recorded(pipeline.recorder, entry, downstream, started):
        try:
            raw, body = await read_request(
                scope["headers"],
                receive,
                key,
                endpoint,
                pipeline.encoders.executor,
                pipeline.admission.pool,
            )
            prepared = await endpoint.admit(pipeline, raw, body, key, entry)
        except AigwError as exc:
            entry.status_code, entry.error_code = exc.status_code, exc.code
            await send_error(scope, receive, send, exc, key_headers(key, entry))
            return
        encoding = await pipeline.encoders.aget(key.encoding)
        call = UpstreamCall(
            _OPENAI,
            _endpoint(key.base_url, endpoint.path),
            prepared.upstream_body,
            prepared.stream,
            prepared.response_headers,
        )

        def relay(clock: UpstreamClock) -> AnswerRelay:
            return endpoint.relay(prepared, key, entry, downstream, clock, encoding)

        await forward(
            pipeline.session, pipeline.settings, key, call, relay, entry, receive, downstream
        )

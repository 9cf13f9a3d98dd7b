"""``/v1``: the OpenAI-compatible endpoints, one route per path.

Each route is documented like any FastAPI route (the models below feed
``openapi.json``) and served by a :class:`aigw.proxy.pipeline.Pipeline` method
as raw ASGI: :class:`_PipelineRoute` swaps FastAPI's request handler (body
parsing, dependency solving, response model) for one that hands the request
to the pipeline, which reads and writes bytes itself, streaming included.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from aigw.proxy.messages.docs import (
    AnthropicError,
    CountTokensRequest,
    Message,
    MessageCreateRequest,
    MessageTokensCount,
)
from aigw.proxy.pipeline import Pipeline
from aigw.proxy.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    Model,
    ModelList,
    OpenAIError,
    ResponseCreateRequest,
    ResponseObject,
)


class _PipelineCall:
    """The answer to one request: the pipeline method named like the route's
    endpoint, called with the raw ASGI triple (no buffering)."""

    __slots__ = ("_method",)

    def __init__(self, method: str) -> None:
        self._method = method

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pipeline: Pipeline = scope["app"].state.proxy
        await getattr(pipeline, self._method)(scope, receive, send)


class _PipelineRoute(APIRoute):
    """A documented route whose requests go to the pipeline method named like its
    endpoint function (the function only documents)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Any]]:
        answer = _PipelineCall(self.endpoint.__name__)

        async def handle(request: Request) -> _PipelineCall:
            return answer  # an ASGI callable: run with the raw scope, receive and send

        return handle

    # Starlette serves HEAD wherever GET is served, and so did these paths; FastAPI
    # would answer 405 and documenting HEAD would change openapi.json. HEAD is
    # routed as GET instead (the server sends no body with it).
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return super().matches(_head_as_get(scope, self.methods))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().handle(_head_as_get(scope, self.methods), receive, send)


def _head_as_get(scope: Scope, methods: set[str] | None) -> Scope:
    if scope.get("method") == "HEAD" and methods and "GET" in methods:
        return {**scope, "method": "GET"}
    return scope


router = APIRouter(tags=["proxy"], route_class=_PipelineRoute)

# Documents the client-token scheme; the pipeline checks the token itself.
_client_token = HTTPBearer(
    scheme_name="ClientToken",
    description="The AI API key's client token (aigw-…), as an OpenAI SDK api_key.",
    auto_error=False,
)


_HEADERS = {
    "x-aigw-input-tokens": {
        "description": "Input tokens counted by the gateway",
        "schema": {"type": "integer"},
    },
    "x-aigw-input-limit": {
        "description": "The key's input limit (0 = unlimited)",
        "schema": {"type": "integer"},
    },
    "x-aigw-output-limit": {
        "description": "The key's output limit (0 = unlimited)",
        "schema": {"type": "integer"},
    },
    "x-aigw-usage-limit": {"description": "reject or use_anyway", "schema": {"type": "string"}},
    "x-aigw-limit-exceeded": {
        "description": "use_anyway only: input, output or input,output when a limit was passed",
        "schema": {"type": "string"},
    },
    "x-aigw-request-id": {"description": "The gateway's request id", "schema": {"type": "string"}},
}


# The data of one event of the stream: a chunk, a final error, or "[DONE]".
_SSE_PAYLOAD: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "title": "ChatCompletionChunk",
            "required": ["id", "object", "created", "model", "choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["chat.completion.chunk"]},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            },
            "additionalProperties": True,
        },
        {
            "type": "object",
            "title": "StreamError",
            "required": ["error"],
            "properties": {"error": {"type": "object"}},
        },
    ]
}
# OpenAPI 3.1 describes each server-sent event as an object ({data, event, id,
# retry}); the JSON in `data` is described with contentMediaType/contentSchema.
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "anyOf": [
                {"type": "string", "enum": ["[DONE]"]},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": _SSE_PAYLOAD,
                },
            ]
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"model": OpenAIError, "description": description, "headers": _HEADERS}


@router.post(
    "/v1/chat/completions",
    summary="Create a chat completion through the key's provider (OpenAI-compatible)",
    response_model=ChatCompletion,
    responses={
        200: {
            "description": "A chat completion, or with `stream: true` an SSE stream of "
            "`chat.completion.chunk` events ending with `data: [DONE]`. A failure after the "
            'stream started is a final `data: {"error": …}` event.',
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
            "headers": _HEADERS,
        },
        400: _error(
            "Bad input (invalid_json, invalid_request), model_not_allowed, "
            "input_token_limit_exceeded, output_token_limit_exceeded"
        ),
        401: _error("invalid_api_key"),
        403: _error("key_disabled"),
        413: _error("payload_too_large"),
        415: _error("unsupported_media_type"),
        502: _error("upstream_error: the upstream failed or could not be reached"),
        504: _error("upstream_timeout: first byte, idle or total deadline passed"),
    },
    dependencies=[Depends(_client_token)],
)
async def create_chat_completion(body: ChatCompletionRequest) -> ChatCompletion:
    raise NotImplementedError  # documents Pipeline.create_chat_completion


@router.get(
    "/v1/models",
    summary="The model this client token may use",
    response_model=ModelList,
    responses={401: _error("invalid_api_key")},
    dependencies=[Depends(_client_token)],
)
async def list_models() -> ModelList:
    raise NotImplementedError  # documents Pipeline.list_models


# {model:path}: model names may hold slashes (meta-llama/Llama-3.1-8B-Instruct).
@router.get(
    "/v1/models/{model:path}",
    summary="The model this client token may use, by name",
    response_model=Model,
    responses={
        401: _error("invalid_api_key"),
        403: _error("key_disabled"),
        404: _error("model_not_found: not the key's model"),
    },
    dependencies=[Depends(_client_token)],
)
async def retrieve_model(model: str) -> Model:
    raise NotImplementedError  # documents Pipeline.retrieve_model


# One typed event of a Responses stream: `event: <type>` and its JSON in `data`.
_RESPONSES_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "The event's type, e.g. response.completed"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {
                        "type": "object",
                        "title": "ResponseStreamEvent",
                        "required": ["type", "sequence_number"],
                        "properties": {
                            "type": {"type": "string"},
                            "sequence_number": {"type": "integer"},
                        },
                        "additionalProperties": True,
                    },
                    {
                        "type": "object",
                        "title": "StreamError",
                        "required": ["error"],
                        "properties": {"error": {"type": "object"}},
                    },
                ]
            },
        },
    },
}


@router.post(
    "/v1/responses",
    summary="Create a model response through the key's provider (OpenAI Responses API)",
    response_model=ResponseObject,
    responses={
        200: {
            "description": "A response object, or with `stream: true` an SSE stream of typed "
            "events (`response.created` … `response.completed`; `response.incomplete` "
            "where the gateway cut the output at the key's limit). A failure after the "
            'stream started is a final `data: {"error": …}` event.',
            "content": {"text/event-stream": {"schema": _RESPONSES_SSE_EVENT}},
            "headers": _HEADERS,
        },
        400: _error(
            "Bad input (invalid_json, invalid_request), model_not_allowed, "
            "input_token_limit_exceeded, output_token_limit_exceeded, input_not_countable, "
            "endpoint_not_supported (the key's provider kind has no Responses API)"
        ),
        401: _error("invalid_api_key"),
        403: _error("key_disabled"),
        404: _error("The upstream's own 404, passed through (a provider without this API)"),
        413: _error("payload_too_large"),
        415: _error("unsupported_media_type"),
        429: _error("The upstream's own 429, passed through"),
        502: _error("upstream_error: the upstream failed or could not be reached"),
        504: _error("upstream_timeout: first byte, idle or total deadline passed"),
    },
    dependencies=[Depends(_client_token)],
)
async def create_response(body: ResponseCreateRequest) -> ResponseObject:
    raise NotImplementedError  # documents Pipeline.create_response


@router.post(
    "/v1/embeddings",
    summary="Create embeddings through the key's provider (OpenAI-compatible)",
    response_model=EmbeddingList,
    responses={
        200: {"description": "The embeddings, as the upstream sent them", "headers": _HEADERS},
        400: _error(
            "Bad input (invalid_json, invalid_request), model_not_allowed, "
            "input_token_limit_exceeded, endpoint_not_supported"
        ),
        401: _error("invalid_api_key"),
        403: _error("key_disabled"),
        404: _error("The upstream's own 404, passed through (a provider without this API)"),
        413: _error("payload_too_large"),
        415: _error("unsupported_media_type"),
        429: _error("The upstream's own 429, passed through"),
        502: _error("upstream_error: the upstream failed or could not be reached"),
        504: _error("upstream_timeout: first byte, idle or total deadline passed"),
    },
    dependencies=[Depends(_client_token)],
)
async def create_embedding(body: EmbeddingRequest) -> EmbeddingList:
    raise NotImplementedError  # documents Pipeline.create_embedding


# Anthropic's Messages API (aigw.proxy.messages).

_client_api_key = APIKeyHeader(
    name="x-api-key",
    scheme_name="ClientApiKey",
    description="The AI API key's client token, as an Anthropic SDK api_key "
    "(Authorization: Bearer works too).",
    auto_error=False,
)


def _anthropic_error(description: str) -> dict[str, Any]:
    return {"model": AnthropicError, "description": description, "headers": _HEADERS}


@router.post(
    "/v1/messages",
    summary="Create a message through the key's provider (Anthropic Messages API)",
    response_model=Message,
    responses={
        200: {
            "description": "A Message, or with `stream: true` the Messages SSE stream "
            "(message_start, content_block_start/delta/stop, message_delta, message_stop); "
            "a failure after it started is a final `error` event.",
            "content": {"text/event-stream": {"schema": {"type": "object"}}},
            "headers": _HEADERS,
        },
        400: _anthropic_error(
            "invalid_request_error: bad input, model_not_allowed, "
            "input_token_limit_exceeded, output_token_limit_exceeded (max_tokens over the limit)"
        ),
        401: _anthropic_error("authentication_error: invalid_api_key"),
        403: _anthropic_error("permission_error: key_disabled"),
        413: _anthropic_error("request_too_large"),
        502: _anthropic_error("api_error: upstream_error"),
        504: _anthropic_error("api_error: upstream_timeout"),
    },
    dependencies=[Depends(_client_api_key), Depends(_client_token)],
)
async def create_message(body: MessageCreateRequest) -> Message:
    raise NotImplementedError  # documents Pipeline.create_message


@router.post(
    "/v1/messages/count_tokens",
    summary="Count a Messages request's input tokens as the gateway judges them",
    response_model=MessageTokensCount,
    responses={
        400: _anthropic_error("invalid_request_error"),
        401: _anthropic_error("authentication_error: invalid_api_key"),
        403: _anthropic_error("permission_error: key_disabled"),
    },
    dependencies=[Depends(_client_api_key), Depends(_client_token)],
)
async def count_message_tokens(body: CountTokensRequest) -> MessageTokensCount:
    raise NotImplementedError  # documents Pipeline.count_message_tokens


# Last: any other /v1 path (every method) answers 404 in OpenAI's envelope listing
# what is served (405 with Allow for a served path asked with another method).
@router.api_route(
    "/v1/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def not_found(path: str) -> None:
    raise NotImplementedError  # documents Pipeline.not_found


# The pipeline method serving each fixed (method, path) of the router above.
_FIXED_ROUTES: dict[tuple[str, str], str] = {
    (method, route.path): route.endpoint.__name__
    for route in router.routes
    if isinstance(route, _PipelineRoute) and not route.param_convertors
    for method in route.methods or ()
    if method != "HEAD"
}


class ProxyFastPath:
    """ASGI middleware, innermost of the app's own: a request for one of the fixed
    ``/v1`` paths above goes straight to its pipeline method (issue 15).

    What it skips does nothing for these requests: route matching over every
    route, FastAPI's request handler around :class:`_PipelineCall`, its exit stack,
    and the exception middleware's wrapping of ``send``. An exception the pipeline
    lets out is answered by the app's handler for its class, as the exception
    middleware would (a bug still goes on to the server-error handler's 500).
    Anything else (other paths and methods, a path parameter, a ``root_path``)
    takes the usual route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = None
        if scope["type"] == "http" and not scope.get("root_path"):
            name = _FIXED_ROUTES.get((scope["method"], scope["path"]))
        if name is None:
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        try:
            await getattr(app.state.proxy, name)(scope, receive, send)
        except Exception as exc:
            handler = _handler_for(app.exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(Request(scope, receive, send), exc)
            if response is not None:
                await response(scope, receive, send)


def _handler_for(handlers: dict[Any, Any], exc: Exception) -> Any:
    """The handler the exception middleware would pick for *exc* (most specific
    class first); ``None`` for those left to the server-error handler."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None

"""A route class for admin JSON bodies: strict parsing, explicit content type.

``json.loads`` accepts ``NaN``, ``Infinity`` and lone surrogates, which then
fail deep inside the database driver; orjson refuses all three (and invalid
UTF-8) at the door, so such bodies become a 422 like any malformed JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from aigw.crypto import constant_time_equals
from aigw.errors import PROBLEM_JSON, Unauthorized, UnsupportedMediaType, ValidationFailed

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {}}}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for an admin operation: each code answers ``application/problem+json``
    (:func:`aigw.apidoc.document_problems` then attaches the ``Problem`` schema)."""
    return {code: _PROBLEM for code in codes}


# The largest real admin body (a provider with 500 models) holds ~1,500 JSON
# values. Validating a 16 MiB object of a million unknown fields costs pydantic
# and FastAPI seconds of event-loop time (one error object each), so bodies are
# bounded by their number of values before they reach validation.
MAX_JSON_VALUES = 10_000


class _TooManyValues(Exception):
    pass


def _nul_field(value: Any) -> str | None:
    """Where in a parsed JSON value a string (or key) holds U+0000, if anywhere.

    Iterative (orjson accepts nesting deeper than Python's recursion limit) and
    bounded: raises :class:`_TooManyValues` past ``MAX_JSON_VALUES``."""
    stack: list[tuple[str, Any]] = [("", value)]
    seen = 0
    while stack:
        path, item = stack.pop()
        seen += 1
        if seen > MAX_JSON_VALUES:
            raise _TooManyValues
        if isinstance(item, str):
            if "\x00" in item:
                return path or "body"
        elif isinstance(item, dict):
            if len(item) > MAX_JSON_VALUES:
                raise _TooManyValues
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                if "\x00" in key:
                    return where
                stack.append((where, child))
        elif isinstance(item, list):
            if len(item) > MAX_JSON_VALUES:
                raise _TooManyValues
            stack.extend(
                (f"{path}.{index}" if path else str(index), child)
                for index, child in enumerate(item)
            )
    return None


def _refuse_nul(field: str, location: str) -> ValidationFailed:
    # PostgreSQL text and jsonb cannot hold U+0000: refused here, it is a 422 with
    # the field named instead of a driver error (500) deep in a query.
    message = "must not contain the NUL character (U+0000)"
    return ValidationFailed(
        f"{field}: {message}",
        errors=[{"field": field, "location": location, "message": message, "type": "nul"}],
    )


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = orjson.loads(body)  # orjson.JSONDecodeError is a json.JSONDecodeError
        return self._json


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            for name, value in request.query_params.multi_items():
                if "\x00" in name or "\x00" in value:
                    raise _refuse_nul(name.replace("\x00", "\\0"), "query")
            strict = StrictJSONRequest(request.scope, request.receive)
            if takes_body and request.method in _BODY_METHODS:
                content_type = request.headers.get("content-type")
                if content_type is not None and not _is_json(content_type):
                    raise UnsupportedMediaType(f"got {content_type[:100]!r}")
                if await strict.body():
                    try:
                        parsed = await strict.json()
                    except orjson.JSONDecodeError:
                        parsed = None  # the handler below reports it as usual
                    try:
                        field = _nul_field(parsed)
                    except _TooManyValues:
                        message = f"the body holds more than {MAX_JSON_VALUES} JSON values"
                        raise ValidationFailed(
                            message,
                            errors=[
                                {
                                    "field": None,
                                    "location": "body",
                                    "message": message,
                                    "type": "too_many_values",
                                }
                            ],
                        ) from None
                    if field:
                        raise _refuse_nul(field.replace("\x00", "\\0")[:200], "body")
            return await handler(strict)

        return strict_handler


def check_admin_token(request: Request) -> None:
    """Constant-time comparison of the ``Authorization: Bearer`` admin token."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    expected = request.app.state.settings.require_admin_token()
    if scheme.lower() != "bearer" or not constant_time_equals(credentials.strip(), expected):
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})


class AdminRoute(StrictJSONRoute):
    """Admin routes authenticate before the body is parsed: a caller without the
    token learns nothing about what a valid body looks like."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated_handler(request: Request) -> Response:
            check_admin_token(request)
            return await handler(request)

        return authenticated_handler

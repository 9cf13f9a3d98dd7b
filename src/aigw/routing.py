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
from aigw.errors import Unauthorized, UnsupportedMediaType

_BODY_METHODS = {"POST", "PUT", "PATCH"}


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
            if takes_body and request.method in _BODY_METHODS:
                content_type = request.headers.get("content-type")
                if content_type is not None and not _is_json(content_type):
                    raise UnsupportedMediaType(f"got {content_type[:100]!r}")
            return await handler(StrictJSONRequest(request.scope, request.receive))

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

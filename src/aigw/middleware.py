"""Pure ASGI middleware (BaseHTTPMiddleware would buffer streams).

* :class:`RequestContextMiddleware` gives every request an id (kept from a
  sane inbound ``x-request-id``, else new), echoes it as ``x-aigw-request-id``
  and exposes it to logs through a context variable.
* :class:`BodyLimitMiddleware` refuses bodies over the limit with 413: at once
  from ``Content-Length``, or as soon as a chunked body crosses it, without
  reading the rest.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw.context import new_request_id, request_id_var
from aigw.errors import PayloadTooLarge, error_response

# Re-exported for modules that still read it from here (aigw.logging).
__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware"]

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{8,64}$")
REQUEST_ID_HEADER = b"x-aigw-request-id"


access_log = logging.getLogger("aigw.access")


class RequestContextMiddleware:
    """Request id in, ``x-aigw-request-id`` out, and one ``aigw.access`` log line
    per request (method, path, status, duration; never headers or bodies)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SANE_ID.match(value):
                request_id = value.decode("ascii")
                break
        request_id = request_id or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        encoded = request_id.encode("ascii")

        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                for name, _ in headers:
                    if name == REQUEST_ID_HEADER:
                        break
                else:
                    headers.append((REQUEST_ID_HEADER, encoded))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            request_id_var.reset(token)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive()`` once a streamed body crosses the limit.

    An ``HTTPException`` because FastAPI turns any other exception raised while it
    reads the body into a 400 ("There was an error parsing the body"); this one it
    re-raises, and the error handlers render it as the same 413 as below.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413, f"request body exceeds {max_bytes} bytes", headers={"connection": "close"}
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        length_seen = chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and not length_seen:
                length_seen = True
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        if declared is not None and not chunked:
            # The server delivers exactly the declared bytes (HTTP/1.1 framing): the
            # body cannot cross the limit, so no wrapper is needed (the usual case).
            await self.app(scope, receive, send)
            return

        seen = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
        response = error_response(scope.get("path", ""), exc)
        # Ask the server to close the connection rather than drain a huge body.
        response.headers["connection"] = "close"
        await response(scope, receive, send)

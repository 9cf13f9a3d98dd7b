"""The operator console: a static single-page app served at ``/ui``.

The console is plain HTML, CSS and ES modules under ``static/`` with no build
step and nothing fetched from elsewhere at run time; it talks to the admin API
on the same origin with the admin token the operator signs in with (kept in
``sessionStorage``, never in a URL).

Every console response carries a strict Content-Security-Policy (``'self'``
only, no inline script or style), ``nosniff``, ``no-referrer`` and a frame ban,
added by :class:`ConsoleSecurityHeaders`, a pure ASGI wrapper: the admin API's
own responses are left untouched.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "ConsoleSecurityHeaders", "mount_ui"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_HTML = STATIC_DIR / "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

_SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
    # No build step means no content-hashed file names: revalidate every time
    # (StaticFiles answers 304 from ETag / Last-Modified), so an upgrade of
    # aigw never leaves a browser running a stale mix of modules.
    (b"cache-control", b"no-cache"),
)
_REPLACED = {name for name, _ in _SECURITY_HEADERS}


class ConsoleSecurityHeaders:
    """Adds the console's security headers to every response of the wrapped app.

    Starlette's ``HTTPException`` (404 for a missing asset, 405 for a POST) is
    rendered here as plain text, so error responses carry the headers too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in _REPLACED
                ]
                headers.extend(_SECURITY_HEADERS)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except HTTPException as exc:
            response: Response = PlainTextResponse(
                exc.detail, status_code=exc.status_code, headers=exc.headers
            )
            await response(scope, receive, send_with_headers)


class _IndexPage:
    """Serves ``index.html`` for the bare ``/ui`` path (no redirect to ``/ui/``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
        await FileResponse(INDEX_HTML, media_type="text/html")(scope, receive, send)


def mount_ui(app: FastAPI) -> None:
    """Serve the console at ``/ui`` and ``/ui/``, outside the OpenAPI schema."""
    app.router.routes.append(
        Route("/ui", ConsoleSecurityHeaders(_IndexPage()), include_in_schema=False)
    )
    app.router.routes.append(
        Mount("/ui", ConsoleSecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True)))
    )

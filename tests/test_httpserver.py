"""The HTTP/1.1 protocol ``aigw serve`` runs (aigw.httpserver), served by uvicorn in
this process with the options ``aigw serve`` passes, in front of a small ASGI app:
the subject is how long a connection is kept, not what the gateway answers.

The fault run under load (tests/reliability/test_faults_under_load.py) lost one
request in ~1,000 to a reset: httpx (and so the OpenAI SDKs) expires an idle
pooled connection after 5 s, uvicorn closed one after 5 s, and now and then the
client sent its next request on a connection the gateway was closing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from openai._constants import DEFAULT_CONNECTION_LIMITS

from aigw import httpserver
from aigw.config import Settings
from tests.proxy.conftest import serve

# Idle timeouts of what commonly sits in front of a gateway: AWS ALB's default
# idle timeout and nginx's default upstream `keepalive_timeout` are both 60 s.
LOAD_BALANCER_IDLE = 60.0


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """200 after reading the body, or 401 at once without reading it (as the
    gateway answers a request without credentials)."""
    assert scope["type"] == "http"
    if scope["path"] == "/unauthorized":
        status = 401
    else:
        status = 200
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def body_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """``AIGW_REQUEST_BODY_TIMEOUT`` of 0.3 s for the protocol in this process."""
    monkeypatch.setenv("AIGW_REQUEST_BODY_TIMEOUT", "0.3")
    httpserver.body_timeout.cache_clear()
    yield httpserver.body_timeout()
    httpserver.body_timeout.cache_clear()


@asynccontextmanager
async def _serving(keepalive_timeout: float) -> AsyncIterator[tuple[str, int]]:
    """The app served as ``aigw serve`` serves (its protocol and keep-alive bound)."""
    async with serve(_app, **httpserver.server_options(keepalive_timeout)) as url:
        where = httpx.URL(url)
        yield where.host, where.port or 80


async def _ask(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str = "/"
) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)
    return head.split(b"\r\n", 1)[0]


async def _closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from *started* until the server closes the connection."""
    try:
        while await asyncio.wait_for(reader.read(1024), timeout=10):
            pass
    except (ConnectionResetError, TimeoutError):
        pass  # closed with a reset; or still open after 10 s, which the caller rejects
    return time.monotonic() - started


async def test_an_idle_connection_is_kept_past_the_body_bound_until_the_keepalive_bound(
    body_timeout: float,
) -> None:
    keepalive = 1.0
    async with _serving(keepalive) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            assert await _ask(writer, reader) == b"HTTP/1.1 200 OK"
            # Idle for twice the body bound: before, the connection was closed at
            # the body bound, and a client's next request on it was lost.
            await asyncio.sleep(2 * body_timeout)
            assert await _ask(writer, reader) == b"HTTP/1.1 200 OK"
            answered = time.monotonic()
            closed_after = await _closed_after(reader, answered)
        finally:
            writer.close()
    # uvicorn's keep-alive timer and the protocol's own agree on the bound.
    assert keepalive - 0.05 <= closed_after < keepalive + 2, closed_after


@pytest.mark.parametrize("after_the_answer", [b"", b" "], ids=["silence", "one-more-byte"])
async def test_the_rest_of_a_body_after_an_answer_does_not_earn_the_keepalive_bound(
    body_timeout: float, after_the_answer: bytes
) -> None:
    """Answered (401) before its body was all in, the connection can only carry the
    rest of that body: it is bounded as a body is, from the answer's end."""
    async with _serving(keepalive_timeout=30.0) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"POST /unauthorized HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401"), head
            await reader.readexactly(2)
            answered = time.monotonic()
            writer.write(after_the_answer)  # none, or one more byte of the body; then silence
            await writer.drain()
            closed_after = await _closed_after(reader, answered)
        finally:
            writer.close()
    assert closed_after < 5, closed_after  # the body bound (0.3 s), not the keep-alive (30 s)


def test_the_default_keepalive_outlasts_the_clients_and_balancers_idle_expiry() -> None:
    keepalive = Settings.model_fields["keepalive_timeout"].default
    openai_sdk_expiry = DEFAULT_CONNECTION_LIMITS.keepalive_expiry
    httpx_expiry = httpx.Limits().keepalive_expiry
    assert openai_sdk_expiry is not None and httpx_expiry is not None
    assert keepalive > max(httpx_expiry, openai_sdk_expiry, LOAD_BALANCER_IDLE)

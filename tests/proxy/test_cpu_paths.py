"""Issue 15's CPU cuts on the per-request path keep their rules.

* :class:`UpstreamClock` re-arms its timer at the first event only when the idle
  bound ends before the first-byte timer would fire; otherwise the timer fires
  early and re-arms itself, so every bound still holds: a stall after the first
  event ends at the idle bound, whether it is shorter or longer than the
  first-byte bound, and never before.
* :class:`RequestContextMiddleware` adds ``x-aigw-request-id`` to an answer's
  start exactly once (never a second one beside the app's own) and passes the
  body messages through untouched.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from aigw.config import Settings
from aigw.middleware import REQUEST_ID_HEADER, RequestContextMiddleware
from aigw.proxy.errors import UpstreamFirstByteTimeout, UpstreamIdleTimeout
from aigw.proxy.upstream import UpstreamClock


def _settings(first_byte: float, idle: float, total: float = 600.0) -> Settings:
    return Settings.model_construct(
        upstream_total_timeout=total,
        upstream_first_byte_timeout=first_byte,
        upstream_idle_timeout=idle,
        upstream_max_response_bytes=1 << 20,
        upstream_max_event_bytes=1 << 20,
    )


class _CountingLoop:
    """The running loop, counting the timers armed through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.armed = 0

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Any) -> asyncio.TimerHandle:
        self.armed += 1
        return self._loop.call_at(when, callback)


async def _stall_after_first_event(first_byte: float, idle: float, stall: float) -> float:
    """Seconds from the first event until the clock ended a stall of *stall* seconds
    (raises what the clock raises; returns the stall when nothing expired)."""
    clock = UpstreamClock(_settings(first_byte, idle))
    async with clock:
        await asyncio.sleep(0.01)
        clock.event()
        started = time.monotonic()
        try:
            await asyncio.sleep(stall)
        finally:
            elapsed = time.monotonic() - started
    return elapsed


@pytest.mark.parametrize(
    ("first_byte", "idle"),
    [(5.0, 0.3), (0.3, 0.6), (0.4, 0.4)],
    ids=["idle-shorter", "idle-longer", "equal"],
)
async def test_a_stall_after_the_first_event_ends_at_the_idle_bound(
    first_byte: float, idle: float
) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamIdleTimeout):
        await _stall_after_first_event(first_byte, idle, stall=10.0)
    elapsed = time.monotonic() - started - 0.01
    assert idle - 0.05 <= elapsed < idle + 0.5


async def test_a_stall_shorter_than_the_idle_bound_passes_the_first_byte_bound() -> None:
    # The first-byte timer fires during the stall (0.2 s in); the idle bound (0.8 s)
    # has not passed, so it re-arms itself and the exchange goes on.
    assert await _stall_after_first_event(0.2, 0.8, stall=0.5) >= 0.5


async def test_no_first_event_ends_at_the_first_byte_bound() -> None:
    clock = UpstreamClock(_settings(0.2, 5.0))
    started = time.monotonic()
    with pytest.raises(UpstreamFirstByteTimeout):
        async with clock:
            await asyncio.sleep(10)
    assert 0.15 <= time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("first_byte", "idle", "armed"),
    [(60.0, 60.0, 1), (30.0, 60.0, 1), (60.0, 30.0, 2)],
    ids=["equal", "idle-longer", "idle-shorter"],
)
async def test_the_first_event_re_arms_only_for_an_earlier_idle_bound(
    first_byte: float, idle: float, armed: int
) -> None:
    clock = UpstreamClock(_settings(first_byte, idle))
    counting = _CountingLoop(asyncio.get_running_loop())
    clock._loop = counting  # type: ignore[assignment]
    async with clock:
        clock.event()
        clock.event()
    assert counting.armed == armed


@pytest.mark.parametrize("own", [False, True], ids=["added", "kept"])
async def test_the_request_id_header_is_added_once(own: bool) -> None:
    headers = [(b"content-type", b"application/json")]
    if own:
        headers.append((REQUEST_ID_HEADER, b"req_app"))
    body = {"type": "http.response.body", "body": b"{}", "more_body": False}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(body)

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": []}
    await RequestContextMiddleware(app)(scope, None, send)  # type: ignore[arg-type]
    start = sent[0]["headers"]
    ids = [value for name, value in start if name == REQUEST_ID_HEADER]
    assert ids == ([b"req_app"] if own else [scope["state"]["request_id"].encode()])
    assert start[0] == (b"content-type", b"application/json")
    assert sent[1] is body

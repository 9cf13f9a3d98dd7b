"""The client side of a /v1 exchange: raw ASGI sends with a write timeout.

Response headers wait for the first relayed event, so a failure before it can
still be a proper error answer; :class:`Downstream` knows whether it started.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import Message, Send

from aigw.proxy.errors import (
    ClientGone,
)

_JSON = b"application/json"


class Downstream:
    """The client side of an exchange: raw ASGI messages, one send per relayed read.

    Writes have a timeout (``AIGW_CLIENT_WRITE_TIMEOUT``): a client that stops
    reading fills its socket buffer and the server's send waits; past the bound the
    write is abandoned with :class:`ClientGone`, so the caller closes the upstream
    request at once. One lazily re-armed timer per exchange, not one per write.
    """

    # --- issue 10 (write timeout): _timeout.._timed_out and _guarded ----------------
    __slots__ = (
        "_send",
        "_task",
        "_timed_out",
        "_timeout",
        "_timer",
        "_writing_since",
        "ended",
        "first_byte_at",
        "started",
    )

    def __init__(self, send: Send, write_timeout: float | None = None) -> None:
        self._send = send
        self._timeout = write_timeout
        self._writing_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timed_out = False
        self.started = False
        self.ended = False
        self.first_byte_at: float | None = None

    async def _guarded(self, message: Message) -> None:
        if self._timeout is None:
            await self._send(message)
            return
        loop = asyncio.get_running_loop()
        self._writing_since = loop.time()
        if self._timer is None:
            self._task = asyncio.current_task()
            self._timer = loop.call_at(self._writing_since + self._timeout, self._check)
        try:
            await self._send(message)
        except asyncio.CancelledError:
            if self._timed_out and self._task is not None:
                self._task.uncancel()
                raise ClientGone() from None
            raise
        finally:
            self._writing_since = None

    def _check(self) -> None:
        self._timer = None
        since = self._writing_since
        if since is None or self._timeout is None or self._task is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - since >= self._timeout:
            self._timed_out = True
            self._task.cancel()
        else:
            self._timer = loop.call_at(since + self._timeout, self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- end issue 10 ----------------------------------------------------------------

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._guarded({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        await self._guarded({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        if data and self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        self.ended = True
        try:
            await self._guarded({"type": "http.response.body", "body": data, "more_body": False})
        finally:
            self._disarm()

    async def answer(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A whole JSON answer."""
        length = (b"content-length", str(len(body)).encode())
        await self.start(status, [(b"content-type", _JSON), length, *headers])
        await self.end(body)

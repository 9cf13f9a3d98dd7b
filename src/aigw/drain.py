"""Draining at SIGTERM: ``/readyz`` answers 503 for ``AIGW_SHUTDOWN_DRAIN``
seconds before the listener closes, so a load balancer health-checking it stops
sending new requests while the process still accepts them; then uvicorn's
graceful shutdown lets the requests in flight finish (``AIGW_SHUTDOWN_GRACE``).

The flag is process state set from a signal handler, which is why it lives in
a module rather than on ``app.state`` (the server cannot reach the app's state
through its middleware stack).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import uvicorn


class _Drain:
    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


DRAIN = _Drain()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, turning not-ready for *drain* seconds at the first SIGTERM."""

    def __init__(self, config: uvicorn.Config, drain: float) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain > 0 and not DRAIN.draining:
            DRAIN.draining = True
            self._captured_signals.append(sig)
            # uvicorn's main loop polls should_exit every 0.1 s.
            timer = threading.Timer(self.drain, self._exit_now)
            timer.daemon = True
            timer.start()
            return
        super().handle_exit(sig, frame)

    def _exit_now(self) -> None:
        self.should_exit = True

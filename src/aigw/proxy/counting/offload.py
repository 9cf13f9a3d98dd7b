"""The worker processes that parse and count large request bodies (issue 10, item 1).

orjson holds the GIL for a whole parse (~40 ms per MB of tiny JSON objects),
and walking a parsed body is Python code: in a thread of the gateway's process
either starves the event loop, so ``/healthz`` waits behind an adversarial
body. A body larger than ``count_process_bytes`` sent to
``/v1/chat/completions``, ``/v1/responses``, ``/v1/messages`` (and
``/v1/messages/count_tokens``) or ``/v1/embeddings``, whatever the key's
counting (for a provider that counts input itself, the body its counter is
asked with is made there too), and a body of any size that may hold a file
(:func:`may_hold_file`: a PDF's streams inflate to up to 16 MiB, a cost not
linear in the body), is therefore parsed, checked
(:func:`aigw.proxy.body.parse_unambiguous`), converted, walked and tokenized in
a worker process (what a worker does per endpoint: :mod:`.workers`); the gateway
gets back only the count and the few top-level fields it decides with
(:class:`.workers.Inspected`), and, once admitted, the body to forward (the
client's bytes, those bytes re-encoded with the gateway's edits, or their
translation to the provider's wire format, each made by a worker). Nothing
whose cost grows with the body then runs in the gateway's process besides
receiving it and a few ``bytes`` scans in C. This module is the pool, shared by
the endpoints: one set of workers, one queue bound, one busy error.

The pool is started on the first large body (an idle gateway holds no extra
process), or, with ``count_warm``, once the gateway is ready, with one worker
that imports what counting needs and loads the encodings in use
(:meth:`CountingPool.warm`); it is stopped again after ``count_process_idle``
seconds without a large body (and, warming on, a fresh worker warmed again), and
bounded: at most ``count_processes`` workers, and at most
``count_queue`` large bodies admitted to it at once; past that a request is
answered 503 ``counting_busy`` with ``Retry-After`` rather than queued without
end. Workers use the ``spawn`` start method (forking a process that runs an
event loop and threads is unsafe) and load the encodings they need on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import re
import sys
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from aigw.errors import AigwError
from aigw.proxy.counting.bounds import holds_quoted

__all__ = ["CountingBusy", "CountingPool", "Refusal", "few_values", "may_hold_file"]

log = logging.getLogger("aigw.proxy")

_T = TypeVar("_T")

_WORKER_NICENESS: Final = 10

# What can bring content whose counting cost is not linear in the body's size
# (a PDF's streams inflate to up to 16 MiB, :mod:`.files`): a ``file_data``
# member (a chat ``file`` part, a Responses ``input_file``) or a Messages
# ``document`` block; and, since a member name or a string may spell its
# letters as JSON escapes (``"file\u005fdata"``), any escaped ASCII letter
# (``\u0040``-``\u007f``; clients escape control characters, quotes and at
# most ``<>&``, which stay outside that range). Images and audio cost linear
# time in their bytes (a header read, a frame walk) and need no such care.
# Three scans in C: one regex with the alternation took 12x as long (no literal
# prefix to skip ahead by: ~7 ms for a 590 KB prompt).
_ESCAPED_LETTER: Final = re.compile(rb"\\u00[4-7]")


def may_hold_file(raw: bytes) -> bool:
    """Whether the body *raw* may hold a file whose counting cost is not linear
    in its size (``bytes`` scans in C, no parse; errs towards yes)."""
    return (
        holds_quoted(raw, (b'"file_data"', b'"document"'))
        or _ESCAPED_LETTER.search(raw) is not None
    )


#: A body up to this size whose structure is small (:func:`few_values`) is parsed
#: and checked in the gateway's process even when it is larger than
#: ``count_process_bytes``: ~1 ms of C per 500 KB, against a worker's round trip
#: (the body through a pipe and back, ~8 ms for 590 KB) on its time to first byte.
PLAIN_BODY_BYTES: Final = 2 * 1024 * 1024
#: At most this many quotes, commas and brackets, all together: more than the
#: JSON values (below), so parsing it costs ~1 ms whatever their shape (300k
#: numbers in 600 KB took 16 ms to parse and walk; a prompt of prose has a few
#: hundred commas).
PLAIN_BODY_VALUES: Final = 16 * 1024


def few_values(raw: bytes) -> bool:
    """Whether *raw* is at most :data:`PLAIN_BODY_BYTES` and holds at most
    :data:`PLAIN_BODY_VALUES` JSON values, counted from above by three
    ``bytes`` scans in C: a value is the body itself, an array's element (each
    but the first after a comma, the first after a bracket) or a member's value
    (each member's name has two quotes)."""
    if len(raw) > PLAIN_BODY_BYTES:
        return False
    left = PLAIN_BODY_VALUES
    for mark in (b'"', b",", b"["):
        # Found one by one (memchr) rather than counted (a byte at a time): few
        # are expected, and the walk stops past the bound.
        find, at = raw.find, -1
        while left >= 0:
            at = find(mark, at + 1)
            if at < 0:
                break
            left -= 1
        if left < 0:
            return False
    return True


class CountingBusy(AigwError):
    status_code = 503
    code = "counting_busy"
    title = "Too many large requests are being counted; retry shortly"
    openai_type = "server_error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """An :class:`AigwError` raised in a worker, carried back by value."""

    error: type[AigwError]
    detail: str
    param: str | None

    def exception(self) -> AigwError:
        return self.error(self.detail, param=self.param)


def _spawnable() -> bool:
    # A spawned worker re-imports the parent's __main__ from its path; a parent run
    # from stdin or an embedded interpreter has none to re-import, and every worker
    # would die at start.
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.exists(path)


def _lower_priority() -> None:
    # Counting is batch work: the gateway's event loop must win the CPU from it.
    with contextlib.suppress(OSError):
        os.nice(_WORKER_NICENESS)


# --- in the gateway --------------------------------------------------------------


class CountingPool:
    """Worker processes for large bodies, started on first use and bounded (see
    the module docstring). ``processes == 0`` turns offloading off."""

    def __init__(
        self, *, processes: int, min_bytes: int, queue: int, idle_seconds: float = 60.0
    ) -> None:
        if processes and not _spawnable():
            log.warning("counting in worker processes is off: __main__ cannot be re-imported")
            processes = 0
        self.processes = processes
        self.min_bytes = min_bytes
        self.queue = queue
        self.idle_seconds = idle_seconds
        self._executor: ProcessPoolExecutor | None = None
        self._pending = 0
        #: Bodies handed to a worker since start (a figure for tests and operators).
        self.submitted = 0
        self._idle: asyncio.TimerHandle | None = None
        self._warm_up: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self._warming: asyncio.Future[Any] | None = None

    def takes(self, raw: bytes) -> bool:
        """Whether the body *raw* is worked on in a worker: one larger than
        ``min_bytes``, or one of any size that may hold a file
        (:func:`may_hold_file`)."""
        return self.processes > 0 and (len(raw) > self.min_bytes or may_hold_file(raw))

    @property
    def started(self) -> bool:
        return self._executor is not None

    def warm(self, work: Callable[..., Any], *args: Any) -> None:
        """Start one worker now and have it run ``work(*args)`` (imports,
        encodings), so that the first large body does not wait seconds for a
        cold worker. The warm worker stays until a body uses it; after that,
        the idle rule applies, and once the workers exit for it a fresh one is
        started and warmed again (its memory back to a new worker's)."""
        if self.processes <= 0:
            return
        self._warm_up = (work, args)
        if self._executor is None:
            self._start_warm()

    def _start_warm(self) -> None:
        assert self._warm_up is not None
        work, args = self._warm_up
        executor = self._executor = self._new_executor()
        future = asyncio.get_running_loop().run_in_executor(executor, work, *args)
        future.add_done_callback(self._warmed)
        self._warming = future

    def _warmed(self, future: asyncio.Future[Any]) -> None:
        self._warming = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("warming a counting worker failed: %r", future.exception())

    async def run(self, work: Callable[..., _T | Refusal], *args: Any) -> _T:
        """``work(*args)`` in a worker; a :class:`Refusal` it returns is raised
        here. 503 :class:`CountingBusy` when ``queue`` bodies are already in."""
        if self._pending >= self.queue:
            raise CountingBusy()
        self._pending += 1
        self.submitted += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            result = await self._submit(work, *args)
        finally:
            self._pending -= 1
            if self._pending == 0 and self._executor is not None:
                self._idle = asyncio.get_running_loop().call_later(
                    self.idle_seconds, self._stop_idle
                )
        if isinstance(result, Refusal):
            raise result.exception()
        return result

    async def _submit(self, work: Callable[..., _T], *args: Any) -> _T:
        executor = self._executor
        if executor is None:
            executor = self._executor = self._new_executor()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work, *args)
        except BrokenExecutor:
            # A worker died (killed, out of memory): start afresh next time.
            log.warning("a counting worker process died; the pool restarts")
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            raise CountingBusy("A counting worker stopped; retry shortly") from None

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_lower_priority,
        )

    def _stop_idle(self) -> None:
        # Idle for idle_seconds: the workers exit, and the gateway's footprint is
        # back to what it was before the first large body.
        self._idle = None
        executor, self._executor = self._executor, None
        if executor is not None and self._pending == 0:
            executor.shutdown(wait=False)
            if self._warm_up is not None:
                self._start_warm()
        elif executor is not None:
            self._executor = executor

    def close(self) -> None:
        self._warm_up = None
        if self._warming is not None:
            self._warming.cancel()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

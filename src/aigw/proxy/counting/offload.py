"""Parsing and counting large request bodies in worker processes (issue 10, item 1).

orjson holds the GIL for a whole parse (~40 ms per MB of tiny JSON objects),
and walking a parsed body is Python code: in a thread of the gateway's process
either starves the event loop, so ``/healthz`` waits behind an adversarial
body. A body larger than ``count_process_bytes`` is therefore parsed, checked
(:func:`aigw.proxy.body.parse_unambiguous`), walked and tokenized in a worker
process; the gateway gets back only the count and the few top-level fields it
decides with (:class:`Inspected`), and, once admitted, the body to forward
(the client's bytes, or those bytes re-encoded with the gateway's edits by a
worker). Nothing whose cost grows with the body then runs in the gateway's
process besides receiving it and two ``bytes`` scans in C.

The pool is started on the first large body (an idle gateway holds no extra
process), stopped again after ``count_process_idle`` seconds without one, and
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
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
import tiktoken

from aigw.errors import AigwError
from aigw.proxy.counting.collect import collect
from aigw.proxy.counting.encodings import load_encoding
from aigw.proxy.counting.prompt import InputCount, count_collected

__all__ = [
    "CountingBusy",
    "CountingPool",
    "Inspected",
    "apply_edits",
    "count_chat_body",
    "encode_edited",
    "inspect_chat_body",
]

log = logging.getLogger("aigw.proxy")

_T = TypeVar("_T")

_WORKER_NICENESS: Final = 10

#: Top-level fields of a chat body the gateway decides with (all small once checked).
HEAD_FIELDS: Final = ("model", "stream", "n", "max_tokens", "max_completion_tokens")


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


@dataclass(frozen=True, slots=True)
class Inspected:
    """What the gateway needs of a body a worker parsed and checked: its small
    top-level fields (:data:`HEAD_FIELDS`, and ``stream_options`` reduced to
    ``include_usage``) and, when asked for, its input count."""

    head: dict[str, Any]
    count: InputCount | None


# --- in the worker ---------------------------------------------------------------

_ENCODINGS: dict[str, tiktoken.Encoding] = {}


def _encoding(name: str) -> tiktoken.Encoding:
    encoding = _ENCODINGS.get(name)
    if encoding is None:
        encoding = _ENCODINGS[name] = load_encoding(name)
    return encoding


def inspect_chat_body(raw: bytes, encoding: str | None, max_chars: int) -> Inspected | Refusal:
    """Parse and check the Chat Completions body *raw* as admission does, and
    count it with *encoding* (``None``: no count)."""
    # Imported here: admission imports this module.
    from aigw.proxy.admission import MAX_OUTPUT_TOKENS, optional_int, parse_chat

    try:
        body = parse_chat(raw)
        for field in ("max_tokens", "max_completion_tokens"):
            optional_int(body, field, 1, MAX_OUTPUT_TOKENS)
    except AigwError as exc:
        return Refusal(type(exc), exc.detail, exc.param)
    head: dict[str, Any] = {field: body[field] for field in HEAD_FIELDS if field in body}
    options = body.get("stream_options")
    if isinstance(options, Mapping):
        head["stream_options"] = {"include_usage": bool(options.get("include_usage"))}
    counted = None
    if encoding is not None:
        counted = count_collected(collect(body), _encoding(encoding), max_chars)
    return Inspected(head, counted)


def count_chat_body(raw: bytes, encoding: str, max_chars: int) -> InputCount:
    """The input count of a Chat Completions body already checked by
    :func:`inspect_chat_body` (for the record, after it was admitted)."""
    return count_collected(collect(orjson.loads(raw)), _encoding(encoding), max_chars)


def apply_edits(body: dict[str, Any], edits: Mapping[str, Any]) -> None:
    """The gateway's edits to a body: top-level fields set; ``stream_options``
    merged into the client's own."""
    for name, value in edits.items():
        if name == "stream_options":
            options = body.get("stream_options")
            body[name] = {**(options if isinstance(options, dict) else {}), **value}
        else:
            body[name] = value


def encode_edited(raw: bytes, edits: Mapping[str, Any]) -> bytes | Refusal:
    """*raw* re-encoded with the gateway's *edits* (:func:`apply_edits`)."""
    from aigw.proxy.errors import InvalidRequest

    body = orjson.loads(raw)
    apply_edits(body, edits)
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson writes at most 255 levels but reads up to 1024
        return Refusal(InvalidRequest, "The request body is nested too deeply", None)


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
        self._idle: asyncio.TimerHandle | None = None

    def takes(self, raw: bytes) -> bool:
        """Whether a body of this size is worked on in a worker."""
        return self.processes > 0 and len(raw) > self.min_bytes

    @property
    def started(self) -> bool:
        return self._executor is not None

    async def run(self, work: Callable[..., _T | Refusal], *args: Any) -> _T:
        """``work(*args)`` in a worker; a :class:`Refusal` it returns is raised
        here. 503 :class:`CountingBusy` when ``queue`` bodies are already in."""
        if self._pending >= self.queue:
            raise CountingBusy()
        self._pending += 1
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
            executor = self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority,
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work, *args)
        except BrokenExecutor:
            # A worker died (killed, out of memory): start afresh next time.
            log.warning("a counting worker process died; the pool restarts")
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            raise CountingBusy("A counting worker stopped; retry shortly") from None

    def _stop_idle(self) -> None:
        # Idle for idle_seconds: the workers exit, and the gateway's footprint is
        # back to what it was before the first large body.
        self._idle = None
        executor, self._executor = self._executor, None
        if executor is not None and self._pending == 0:
            executor.shutdown(wait=False)
        elif executor is not None:
            self._executor = executor

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

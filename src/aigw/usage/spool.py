"""The usage spool: a local append-only journal of usage rows, so a gateway killed
with SIGKILL (or one whose database is away) loses no record of a request it
finished.

Every row the recorder accepts is appended to this process's current segment,
``<data>/usage-spool/segment-<pid>-<ns>.jsonl`` (one JSON array per line, in
the column order of :data:`aigw.usage.entry.COLUMNS`), with one ``write``
straight to the kernel: once ``record()`` returns, the row survives the
process. A segment is deleted once every row in it is in the database. Each
segment is held under an exclusive ``flock`` while its process lives; at start,
a process replays the segments nobody holds (their process died), row ids
making the replay idempotent (``ON CONFLICT (id) DO NOTHING``).

Bounded: past ``AIGW_USAGE_SPOOL_MAX_BYTES`` on disk, new rows are kept in
memory only (and counted). Rows the database refuses even one by one are kept
aside in ``rejected-<pid>-<ns>.jsonl.held`` (same format); after fixing the
cause, renaming such a file to ``*.jsonl`` makes the next start replay it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("aigw.usage.spool")

SPOOL_DIR = "usage-spool"
_SEGMENT_BYTES = 4 * 1024 * 1024


class Segment:
    """One journal file of this process, locked while open."""

    __slots__ = ("closed", "fd", "path", "pending", "size")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.pending = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"Segment({self.path.name}, pending={self.pending})"


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _now_name(prefix: str, suffix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.time_ns()}{suffix}"


def encode_row(row: tuple[Any, ...]) -> bytes:
    # default=str: the driver's own UUID type (asyncpg's) is not uuid.UUID to orjson.
    return orjson.dumps(row, default=str) + b"\n"


def encode_rows(rows: list[tuple[Any, ...]]) -> str:
    """*rows* as one JSON array of arrays, as :func:`encode_row` writes each (the
    usage recorder's batch insert reads it)."""
    return orjson.dumps(rows, default=str).decode()


def decode_row(line: bytes, width: int) -> tuple[Any, ...]:
    """A row as the spool wrote it; ``ValueError`` for anything else (a torn line)."""
    values = orjson.loads(line)
    if not isinstance(values, list) or len(values) != width:
        raise ValueError("not a usage row")
    values[0] = uuid.UUID(values[0])
    values[1] = datetime.fromisoformat(values[1])
    values[3] = uuid.UUID(values[3])
    return tuple(values)


class Spool:
    """This process's segments and the folder they live in (see the module docstring)."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = _SEGMENT_BYTES):
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._current: Segment | None = None
        self._live: list[Segment] = []
        self.bytes = 0  # on disk in this process's segments
        self.overflowed = 0  # rows not spooled because the spool was full
        self.errors = 0  # rows not spooled because the disk said no

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _new_segment(self) -> Segment:
        path = self.directory / _now_name("segment", ".jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        _lock(fd)
        segment = Segment(path, fd)
        self._live.append(segment)
        return segment

    def append(self, row: tuple[Any, ...]) -> Segment | None:
        """Journal *row*; returns its segment (``None``: not journaled). Never raises."""
        try:
            line = encode_row(row)
            if self.bytes + len(line) > self.max_bytes:
                self.overflowed += 1
                if self.overflowed == 1 or self.overflowed % 1000 == 0:
                    log.error(
                        "usage spool full (%d bytes); %d rows kept in memory only",
                        self.bytes,
                        self.overflowed,
                    )
                return None
            segment = self._current
            if segment is None or segment.size >= self.segment_bytes:
                if segment is not None:
                    segment.closed = True
                    self._retire_if_done(segment)
                segment = self._current = self._new_segment()
            os.write(segment.fd, line)
        except (OSError, TypeError, ValueError) as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.error(
                    "usage spool write failed (%s); %d so far", type(exc).__name__, self.errors
                )
            return None
        segment.size += len(line)
        segment.pending += 1
        self.bytes += len(line)
        return segment

    def release(self, segment: Segment) -> None:
        """One row of *segment* is in the database."""
        segment.pending -= 1
        self._retire_if_done(segment)

    def _retire_if_done(self, segment: Segment) -> None:
        if segment.pending > 0 or not segment.closed or segment.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        os.close(segment.fd)
        segment.fd = -1
        self.bytes -= segment.size
        self._live.remove(segment)

    def close(self) -> int:
        """Close every segment; those with rows not yet in the database stay on disk
        for the next start. Returns how many rows stay."""
        kept = 0
        for segment in list(self._live):
            segment.closed = True
            kept += segment.pending
            if segment.pending <= 0:
                self._retire_if_done(segment)
            else:
                os.close(segment.fd)
                segment.fd = -1
                self._live.remove(segment)
        self._current = None
        return kept

    def orphans(self) -> Iterator[tuple[Path, int]]:
        """Segments no live process holds, each yielded with its lock taken (the
        caller closes the fd once it is replayed and deleted)."""
        for path in sorted(self.directory.glob("segment-*.jsonl")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if not _lock(fd):
                os.close(fd)
                continue
            if not path.exists():  # replayed and deleted by another process meanwhile
                os.close(fd)
                continue
            yield path, fd

    def keep_aside(self, lines: list[bytes]) -> Path:
        """Append *lines* (encoded rows, or unreadable spool lines) to this process's
        file of rejected rows."""
        self.open()
        path = self.directory / f"rejected-{os.getpid()}.jsonl.held"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
        finally:
            os.close(fd)
        return path

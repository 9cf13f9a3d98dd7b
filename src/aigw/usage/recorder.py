"""Usage records, written off the request path in batches.

A request hands its :class:`UsageEntry` to :meth:`UsageRecorder.record`, which
turns it into a row clamped to its columns, journals the row in the local
spool (:mod:`aigw.usage.spool`) and appends it to an in-memory buffer: it
cannot block, fail or be cancelled, so a client that disconnects mid-stream
still leaves its record (the handler records from a ``finally`` block). One
background task writes the buffer in batches with ``INSERT … ON CONFLICT (id)
DO NOTHING``; ids are made here, so a batch retried after a database outage, or
a spool replayed at start, is never written twice.

One bad row never blocks another: a batch the database refuses for its data
(SQLSTATE classes 22 and 23, or a value the driver cannot encode) is retried
row by row, and a row that still fails is kept aside in the spool folder,
logged and counted (``aigw_usage_records_rejected_total``) — never retried
forever. While the database is down the buffer keeps filling up to
``usage_buffer_limit`` rows (beyond that the oldest leave memory, but not the
spool) and the writer retries with capped exponential backoff. :meth:`aclose`
flushes what is pending, bounded by the shutdown grace period; what it could
not write stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.usage.entry import COLUMNS, UsageEntry
from aigw.usage.models import UsageRecord
from aigw.usage.spool import Segment, Spool, decode_row, encode_row, encode_rows

log = logging.getLogger("aigw.usage.recorder")


def _insert_sql() -> str:
    """A JSON array of rows in (each row an array in :data:`COLUMNS` order, as the
    spool writes it), one row per element out; ids made by the gateway make a
    retried batch a no-op. Built from the constants above only.

    JSON rather than one typed array per column: the driver encoded ~26 array
    elements per record in Python-visible steps (~10 us of the gateway's CPU
    per record, issue 15); orjson writes the batch in ~1 us a record."""
    names = ", ".join(name for name, _ in COLUMNS)
    values = ", ".join(f"(r->>{n})::{kind}" for n, (_, kind) in enumerate(COLUMNS))
    table = UsageRecord.__tablename__
    return (
        f"INSERT INTO {table} ({names}) SELECT {values} FROM json_array_elements($1::json) AS r"  # noqa: S608  # nosec B608
        " ON CONFLICT (id) DO NOTHING"
    )


_INSERT = _insert_sql()


# What a refused row looks like: its data (SQLSTATE 22xxx, 23xxx), or a value the
# driver could not encode. Anything else (connection, shutdown, timeout) is the
# database's state, not the row's: the batch is kept and retried.
_DATA_SQLSTATE_CLASSES = ("22", "23")


def _is_data_error(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _DATA_SQLSTATE_CLASSES
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        return isinstance(exc, asyncpg.exceptions.DataError)
    return isinstance(exc, TypeError | ValueError | OverflowError | UnicodeError)


_Pending = tuple[tuple[Any, ...], Segment | None]


class UsageRecorder:
    """Buffer + spool + one writer task; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        flush_interval: float,
        batch_size: int,
        buffer_limit: int,
        on_record: Callable[[UsageEntry], None] | None = None,
        on_rejected: Callable[[int], None] | None = None,
        spool: Spool | None = None,
        max_backoff: float = 10.0,
    ) -> None:
        self._engine = engine
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._buffer: deque[_Pending] = deque(maxlen=buffer_limit)
        self._on_record = on_record
        self._on_rejected = on_rejected
        self._spool = spool
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # One batch write at a time: flush() and the writer task both take the
        # buffer's head, and two overlapping writes would pop each other's rows.
        self._write_lock = asyncio.Lock()
        self._evicted = 0
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.rejected = 0
        self.replayed = 0

    def __repr__(self) -> str:
        return f"UsageRecorder(pending={len(self._buffer)}, written={self.written})"

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, entry: UsageEntry) -> None:
        """Journal *entry* and queue it for writing. Never blocks, never raises."""
        try:
            row = entry.as_values()
        except Exception:  # as_values clamps everything; a bug must not fail a request
            log.exception("usage entry could not be turned into a row")
            self._count_rejected(1)
            return
        segment = self._spool.append(row) if self._spool is not None else None
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self.dropped += 1
            self._evicted += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "usage buffer full; %d records left memory so far (kept in the spool"
                    " for the next start while it has room)",
                    self.dropped,
                )
        buffer.append((row, segment))
        if len(buffer) >= self._batch_size:
            self._wake.set()
        if self._on_record is not None:
            try:
                self._on_record(entry)
            except Exception:  # metrics must never break a request
                log.exception("usage observer failed")

    def start(self) -> None:
        if self._spool is not None:
            self._spool.open()
        self._task = asyncio.create_task(self._run(), name="aigw-usage-recorder")

    async def aclose(self, grace: float) -> None:
        """Stop the writer and flush what is pending within *grace* seconds."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        kept = self._spool.close() if self._spool is not None else 0
        if self._buffer:
            log.error(
                "shutdown: %d usage records could not be written; %d of them stay in the"
                " spool for the next start",
                len(self._buffer),
                kept,
            )

    async def flush(self) -> None:
        """Write everything buffered now (used by tests and shutdown)."""
        while self._buffer:
            await self._write_batch()

    async def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        batch = encode_rows(rows)
        async with self._engine.connect() as connection:
            # One statement per batch, straight on the driver: the ORM's
            # executemany costs more CPU than the requests being recorded.
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.execute(_INSERT, batch)

    async def _write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Write *rows*; a batch refused for its data falls back to rows, and a row
        still refused is kept aside. Raises only for the database's state."""
        try:
            await self._insert(rows)
            return
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            if len(rows) == 1:
                self._keep_aside(rows[0], exc)
                return
            log.warning(
                "usage batch of %d refused (%s); writing it row by row", len(rows), _reason(exc)
            )
        for row in rows:
            try:
                await self._insert([row])
            except Exception as exc:
                if not _is_data_error(exc):
                    raise
                self._keep_aside(row, exc)

    def _keep_aside(self, row: tuple[Any, ...], exc: BaseException) -> None:
        where = "nowhere (no spool)"
        if self._spool is not None:
            try:
                where = str(self._spool.keep_aside([encode_row(row)]))
            except (OSError, TypeError, ValueError) as err:
                where = f"nowhere ({type(err).__name__})"
        log.error(
            "usage record %s refused by the database (%s); kept aside in %s",
            row[0],
            _reason(exc),
            where,
        )
        self._count_rejected(1)

    def _count_rejected(self, count: int) -> None:
        self.rejected += count
        if self._on_rejected is not None:
            with contextlib.suppress(Exception):
                self._on_rejected(count)

    async def _write_batch(self) -> None:
        async with self._write_lock:
            await self._write_head()

    async def _write_head(self) -> None:
        count = min(len(self._buffer), self._batch_size)
        if not count:
            return
        batch = [self._buffer[index] for index in range(count)]
        self._evicted = 0
        await self._write_rows([row for row, _ in batch])
        # Drop exactly what was written (less what overflow already evicted from
        # the left meanwhile); entries appended meanwhile stay.
        for _ in range(max(0, count - self._evicted)):
            self._buffer.popleft()
        if self._spool is not None:
            for _, segment in batch:
                if segment is not None:
                    self._spool.release(segment)
        self.written += count

    async def _replay_spool(self) -> None:
        """Write the rows of segments left by processes that died; idempotent."""
        assert self._spool is not None
        spool = self._spool
        # File work off the loop: requests are already being served.
        for path, fd in await asyncio.to_thread(lambda: list(spool.orphans())):
            try:
                lines = (await asyncio.to_thread(_read_fd, fd)).splitlines()
                rows, unreadable = [], []
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        rows.append(decode_row(line, len(COLUMNS)))
                    except (ValueError, TypeError):
                        unreadable.append(line)
                if unreadable:
                    self._spool.keep_aside(unreadable)
                    log.error(
                        "usage spool %s: %d unreadable lines kept aside", path, len(unreadable)
                    )
                    self._count_rejected(len(unreadable))
                for start in range(0, len(rows), self._batch_size):
                    await self._write_rows(rows[start : start + self._batch_size])
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self.replayed += len(rows)
                log.info("usage spool %s replayed: %d records", path.name, len(rows))
            finally:
                os.close(fd)

    async def _run(self) -> None:
        backoff = self._flush_interval
        replayed = self._spool is None
        while True:
            if not self._closing and replayed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            try:
                if not replayed:
                    await self._replay_spool()
                    replayed = True
                # What is buffered now, then only full batches back to back: under
                # load, chasing every few new rows would pay a round trip per handful.
                await self._write_batch()
                while len(self._buffer) >= self._batch_size or (self._closing and self._buffer):
                    await self._write_batch()
                backoff = self._flush_interval
            except Exception as exc:
                self.failures += 1
                log.warning(
                    "usage write failed (%s); %d pending, retrying in %.1fs",
                    _reason(exc),
                    len(self._buffer),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if self._closing:
                return


def _read_fd(fd: int) -> bytes:
    with open(fd, "rb", closefd=False) as handle:
        return handle.read()


def _reason(exc: BaseException) -> str:
    """An error's class and SQLSTATE: never its message, which can quote row values."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} {state}" if state else type(exc).__name__

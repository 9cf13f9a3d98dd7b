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
import math
import os
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.usage.models import UsageRecord
from aigw.usage.spool import Segment, Spool, decode_row, encode_row, encode_rows

log = logging.getLogger("aigw.usage.recorder")


@dataclass(slots=True)
class UsageEntry:
    """One proxied request's usage; columns of :class:`UsageRecord`."""

    request_id: str
    api_key_id: uuid.UUID
    alias: str
    provider: str
    model: str
    outcome: str
    status_code: int
    input_limit: int
    output_limit: int
    usage_limit: str
    input_tokens: int = 0
    output_tokens: int = 0
    upstream_input_tokens: int | None = None
    upstream_output_tokens: int | None = None
    error_code: str | None = None
    input_limit_exceeded: bool = False
    output_limit_exceeded: bool = False
    stream: bool = False
    budget_exceeded: bool = False
    rate_exceeded: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    endpoint: str = "chat.completions"
    # Which counter decided the input limit: tiktoken, upstream or fallback.
    input_counter: str = "tiktoken"
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_values(self) -> tuple[Any, ...]:
        """The row, in the order of :data:`COLUMNS`, each value clamped to its column
        (whatever a hostile upstream or body put in the entry)."""
        return (
            self.id,
            self.created_at,
            _text(self.request_id, 64) or "-",
            self.api_key_id,
            _text(self.alias, 64),
            _text(self.provider, 64),
            _text(self.model, 128),
            _text(self.outcome, 32),
            _text(self.error_code, 64) if self.error_code is not None else None,
            _int(self.status_code, _INT2_MAX) or 0,
            _int(self.input_tokens) or 0,
            _int(self.output_tokens) or 0,
            _int(self.upstream_input_tokens),
            _int(self.upstream_output_tokens),
            _int(self.input_limit) or 0,
            _int(self.output_limit) or 0,
            _text(self.usage_limit, 16),
            self.input_limit_exceeded is True,
            self.output_limit_exceeded is True,
            self.stream is True,
            _float(self.latency_ms) or 0.0,
            _float(self.ttfb_ms),
            self.budget_exceeded is True,
            self.rate_exceeded is True,
            _text(self.endpoint, 32) or "chat.completions",
            _text(self.input_counter, 16) or "tiktoken",
        )


_INT2_MAX = 2**15 - 1
_INT8_MAX = 2**63 - 1


def _int(value: Any, high: int = _INT8_MAX) -> int | None:
    if type(value) is not int:
        return None
    return min(max(value, 0), high)


def _float(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any, length: int) -> str:
    """*value* as PostgreSQL text of at most *length* characters: no NUL, valid UTF-8."""
    if type(value) is str and len(value) <= length and value.isascii() and "\x00" not in value:
        return value  # the usual case, eight times per record
    text = value if type(value) is str else str(value)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:length].replace("\x00", "")


# (column, PostgreSQL type) of usage_records, in UsageEntry.as_values() order; also the
# order of a spooled row.
COLUMNS = (
    ("id", "uuid"),
    ("created_at", "timestamptz"),
    ("request_id", "text"),
    ("api_key_id", "uuid"),
    ("alias", "text"),
    ("provider", "text"),
    ("model", "text"),
    ("outcome", "text"),
    ("error_code", "text"),
    ("status_code", "int2"),
    ("input_tokens", "int8"),
    ("output_tokens", "int8"),
    ("upstream_input_tokens", "int8"),
    ("upstream_output_tokens", "int8"),
    ("input_limit", "int8"),
    ("output_limit", "int8"),
    ("usage_limit", "text"),
    ("input_limit_exceeded", "bool"),
    ("output_limit_exceeded", "bool"),
    ("stream", "bool"),
    ("latency_ms", "float8"),
    ("ttfb_ms", "float8"),
    ("budget_exceeded", "bool"),
    ("rate_exceeded", "bool"),
    ("endpoint", "text"),
    ("input_counter", "text"),
)


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

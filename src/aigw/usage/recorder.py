"""Usage records, written off the request path in batches.

A request hands its :class:`UsageEntry` to :meth:`UsageRecorder.record`, which
only appends to an in-memory buffer: it cannot block, fail or be cancelled, so
a client that disconnects mid-stream still leaves its record (the handler
records from a ``finally`` block). One background task writes the buffer in
batches with ``INSERT … ON CONFLICT (id) DO NOTHING``; ids are made here, so a
batch retried after a database outage is never written twice.

While the database is down the buffer keeps filling up to
``usage_buffer_limit`` entries (beyond that the oldest are dropped and counted)
and the writer retries with capped exponential backoff. :meth:`aclose` flushes
what is pending, bounded by the shutdown grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.usage.models import UsageRecord

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
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    # Which counter decided the input limit: tiktoken, upstream or fallback.
    input_counter: str = "tiktoken"
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_values(self) -> tuple[Any, ...]:
        """The row, in the order of ``_COLUMNS``."""
        return (
            self.id,
            self.created_at,
            self.request_id[:64],
            self.api_key_id,
            self.alias,
            self.provider,
            self.model[:128],
            self.outcome,
            self.error_code[:64] if self.error_code else None,
            self.status_code,
            self.input_tokens,
            self.output_tokens,
            self.upstream_input_tokens,
            self.upstream_output_tokens,
            self.input_limit,
            self.output_limit,
            self.usage_limit,
            self.input_limit_exceeded,
            self.output_limit_exceeded,
            self.stream,
            self.latency_ms,
            self.ttfb_ms,
            self.input_counter,
        )


# (column, PostgreSQL type) of usage_records, in UsageEntry.as_values() order.
_COLUMNS = (
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
    ("input_tokens", "int4"),
    ("output_tokens", "int4"),
    ("upstream_input_tokens", "int4"),
    ("upstream_output_tokens", "int4"),
    ("input_limit", "int4"),
    ("output_limit", "int4"),
    ("usage_limit", "text"),
    ("input_limit_exceeded", "bool"),
    ("output_limit_exceeded", "bool"),
    ("stream", "bool"),
    ("latency_ms", "float8"),
    ("ttfb_ms", "float8"),
    ("input_counter", "text"),
)


def _insert_sql() -> str:
    """Column arrays in, one row per element out; ids made by the gateway make a
    retried batch a no-op. Built from the constants above only."""
    names = ", ".join(name for name, _ in _COLUMNS)
    arrays = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(_COLUMNS, start=1))
    table = UsageRecord.__tablename__
    return (
        f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT (id) DO NOTHING"  # noqa: S608  # nosec B608
    )


_INSERT = _insert_sql()


class UsageRecorder:
    """Buffer + one writer task; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        flush_interval: float,
        batch_size: int,
        buffer_limit: int,
        on_record: Callable[[UsageEntry], None] | None = None,
        max_backoff: float = 10.0,
    ) -> None:
        self._engine = engine
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._buffer: deque[UsageEntry] = deque(maxlen=buffer_limit)
        self._on_record = on_record
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._evicted = 0
        self.written = 0
        self.dropped = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"UsageRecorder(pending={len(self._buffer)}, written={self.written})"

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, entry: UsageEntry) -> None:
        """Queue *entry* for writing. Never blocks, never raises."""
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self.dropped += 1
            self._evicted += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage buffer full; %d records dropped so far", self.dropped)
        buffer.append(entry)
        if len(buffer) >= self._batch_size:
            self._wake.set()
        if self._on_record is not None:
            try:
                self._on_record(entry)
            except Exception:  # metrics must never break a request
                log.exception("usage observer failed")

    def start(self) -> None:
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
        if self._buffer:
            log.error("shutdown: %d usage records could not be written", len(self._buffer))

    async def flush(self) -> None:
        """Write everything buffered now (used by tests and shutdown)."""
        while self._buffer:
            await self._write_batch()

    async def _write_batch(self) -> None:
        count = min(len(self._buffer), self._batch_size)
        if not count:
            return
        batch = [self._buffer[index] for index in range(count)]
        self._evicted = 0
        columns: list[list[Any]] = [[] for _ in _COLUMNS]
        for entry in batch:
            for column, value in zip(columns, entry.as_values(), strict=True):
                column.append(value)
        async with self._engine.connect() as connection:
            # One statement per batch, straight on the driver: the ORM's
            # executemany costs more CPU than the requests being recorded.
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.execute(_INSERT, *columns)
        # Drop exactly what was written (less what overflow already evicted from
        # the left meanwhile); entries appended meanwhile stay.
        for _ in range(max(0, count - self._evicted)):
            self._buffer.popleft()
        self.written += count

    async def _run(self) -> None:
        backoff = self._flush_interval
        while True:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            self._wake.clear()
            try:
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
                    type(exc).__name__,
                    len(self._buffer),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if self._closing:
                return

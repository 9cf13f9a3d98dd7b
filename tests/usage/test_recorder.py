"""The usage recorder: batched writes off the request path, exactly once across
retries, buffering through a database outage, flushing on shutdown."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.config import Settings
from aigw.db.engine import create_engine
from aigw.usage.entry import UsageEntry
from aigw.usage.recorder import UsageRecorder


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


def entry(**overrides: Any) -> UsageEntry:
    values: dict[str, Any] = {
        "request_id": "req_" + uuid.uuid4().hex[:12],
        "api_key_id": uuid.uuid4(),
        "alias": "a",
        "provider": "p",
        "model": "m",
        "outcome": "completed",
        "status_code": 200,
        "input_limit": 0,
        "output_limit": 0,
        "usage_limit": "reject",
        "input_tokens": 3,
        "output_tokens": 4,
    }
    values.update(overrides)
    return UsageEntry(**values)


async def count(db: str) -> int:
    conn = await asyncpg.connect(db)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_records"))
    finally:
        await conn.close()


async def test_batches_are_written_and_retries_never_double(engine: AsyncEngine, db: str) -> None:
    recorder = UsageRecorder(engine, flush_interval=0.05, batch_size=10, buffer_limit=1000)
    entries = [entry() for _ in range(25)]
    for item in entries:
        recorder.record(item)
    await recorder.flush()
    assert await count(db) == 25 and recorder.pending == 0
    # A batch retried after an outage (same gateway-made ids) lands once.
    for item in entries[:10]:
        recorder.record(item)
    await recorder.flush()
    assert await count(db) == 25


async def test_outage_buffers_then_writes_and_shutdown_flushes(
    engine: AsyncEngine, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = UsageRecorder(
        engine, flush_interval=0.02, batch_size=5, buffer_limit=1000, max_backoff=0.05
    )
    real_write = UsageRecorder._write_batch
    failures = {"left": 3}

    async def flaky(self: UsageRecorder) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionRefusedError("database down")
        await real_write(self)

    monkeypatch.setattr(UsageRecorder, "_write_batch", flaky)
    recorder.start()
    for _ in range(12):
        recorder.record(entry())
    await recorder.aclose(grace=5.0)
    assert recorder.failures == 3
    assert await count(db) == 12 and recorder.pending == 0


async def test_buffer_is_bounded(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, flush_interval=10, batch_size=100, buffer_limit=3)
    for _ in range(5):
        recorder.record(entry())
    assert recorder.pending == 3 and recorder.dropped == 2


async def test_observer_errors_never_reach_the_caller(engine: AsyncEngine) -> None:
    def broken(_: UsageEntry) -> None:
        raise RuntimeError("metrics down")

    recorder = UsageRecorder(
        engine, flush_interval=10, batch_size=100, buffer_limit=10, on_record=broken
    )
    recorder.record(entry())
    assert recorder.pending == 1


async def test_flush_while_the_writer_runs_writes_every_row_once(
    engine: AsyncEngine, db: str
) -> None:
    """flush() and the writer task both take the buffer's head: overlapping, they
    popped each other's rows (IndexError, or rows dropped unwritten)."""
    recorder = UsageRecorder(engine, flush_interval=0.001, batch_size=7, buffer_limit=10_000)
    recorder.start()
    try:
        for _ in range(20):
            for _ in range(30):
                recorder.record(entry())
            await asyncio.gather(recorder.flush(), recorder.flush())
        await recorder.flush()
    finally:
        await recorder.aclose(grace=5)
    assert await count(db) == 600 and recorder.pending == 0

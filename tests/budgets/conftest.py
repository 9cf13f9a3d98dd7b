"""Budget test helpers: the fake upstream's own prompt count, and the counters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.fakes import FakeUpstream, start_fake_upstream
from tests.fakes.billing import load_encoding, prompt_tokens
from tests.proxy.conftest import MODEL, gateway  # noqa: F401 - a fixture

MESSAGES = [{"role": "user", "content": "go"}]


def billed_prompt(messages: list[dict[str, Any]] = MESSAGES) -> int:
    """The prompt tokens by the fake's rules (OpenAI's cookbook formula), not aigw's."""
    return prompt_tokens({"model": MODEL, "messages": messages}, load_encoding("o200k_base"))


def words_of(text: str) -> int:
    """The fake's output is one token per word ("The quick brown ..."): a hand count."""
    return len(text.split())


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with start_fake_upstream() as server:
        yield server


async def counters(db: str, key_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            "SELECT period_start, used, reserved FROM budget_counters WHERE api_key_id = $1",
            uuid.UUID(key_id),
        )
        return [dict(row) for row in rows]
    finally:
        await conn.close()


async def leases(db: str, key_id: str) -> int:
    conn = await asyncpg.connect(db)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM budget_leases WHERE api_key_id = $1", uuid.UUID(key_id)
            )
        )
    finally:
        await conn.close()

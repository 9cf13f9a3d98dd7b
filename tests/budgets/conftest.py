"""Budget test helpers: the fake upstream's own prompt count, and the counters of
either store.

Tests of store semantics take the ``store`` fixture, parametrised over both
stores: ``pg`` always, ``redis`` when a Redis answers at ``AIGW_TEST_REDIS_URL``
(default ``redis://127.0.0.1:6379/15``; skipped with the reason otherwise — a
fresh machine has no Redis). Each Redis test uses its own key prefix and deletes
only its own keys afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from functools import cache
from typing import Any

import asyncpg
import pytest

from tests.conftest import SharedFakeUpstream
from tests.fakes import FakeUpstream
from tests.fakes.billing import load_encoding, prompt_tokens
from tests.proxy.conftest import MODEL, gateway  # noqa: F401 - a fixture

MESSAGES = [{"role": "user", "content": "go"}]
REDIS_URL = os.environ.get("AIGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def billed_prompt(messages: list[dict[str, Any]] = MESSAGES) -> int:
    """The prompt tokens by the fake's rules (OpenAI's cookbook formula), not aigw's."""
    return prompt_tokens({"model": MODEL, "messages": messages}, load_encoding("o200k_base"))


def words_of(text: str) -> int:
    """The fake's output is one token per word ("The quick brown ..."): a hand count."""
    return len(text.split())


@pytest.fixture(scope="module")
def fake(shared_fake_upstream: SharedFakeUpstream) -> FakeUpstream:
    return shared_fake_upstream.fresh()


@cache
def redis_missing() -> str | None:
    """Why the Redis tests cannot run here, or None when a Redis answers."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return f"no Redis answers at AIGW_TEST_REDIS_URL={REDIS_URL} ({type(exc).__name__})"
    return None


class StoreView:
    """One test's budget store: the settings and environment that select it, and
    its counters read straight from PostgreSQL or Redis (not through aigw)."""

    def __init__(self, kind: str, db: str) -> None:
        self.kind = kind
        self.db = db
        self.prefix = f"aigw-test-{uuid.uuid4().hex[:12]}:"
        if kind == "redis":
            self.settings: dict[str, Any] = {"redis_url": REDIS_URL, "redis_prefix": self.prefix}
            self.env = {"AIGW_REDIS_URL": REDIS_URL, "AIGW_REDIS_PREFIX": self.prefix}
        else:
            self.settings = {"redis_url": None}
            self.env = {"AIGW_REDIS_URL": ""}

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5.0)

    def _keys(self, client: Any, key_id: str, kind: str) -> list[str]:
        return sorted(client.scan_iter(match=f"{self.prefix}{{{key_id}}}:{kind}:*", count=1000))

    async def counters(self, key_id: str) -> list[dict[str, Any]]:
        """``[{period_start, used, reserved}]`` of the key, one per period counted."""
        if self.kind == "redis":
            return await asyncio.to_thread(self._redis_counters, key_id)
        conn = await asyncpg.connect(self.db)
        try:
            rows = await conn.fetch(
                "SELECT period_start, used, reserved FROM budget_counters WHERE api_key_id = $1",
                uuid.UUID(key_id),
            )
            return [dict(row) for row in rows]
        finally:
            await conn.close()

    def _redis_counters(self, key_id: str) -> list[dict[str, Any]]:
        from datetime import UTC

        with contextlib.closing(self._redis()) as client:
            out = []
            for name in self._keys(client, key_id, "b"):
                values = client.hgetall(name)
                start = datetime.fromtimestamp(int(name.rsplit(":", 1)[1]), UTC)
                out.append(
                    {
                        "period_start": start,
                        "used": int(values.get("used", 0)),
                        "reserved": int(values.get("reserved", 0)),
                    }
                )
            return out

    async def leases(self, key_id: str) -> int:
        """Reservations the key's counters hold leases for."""
        if self.kind == "redis":
            return await asyncio.to_thread(self._redis_leases, key_id)
        conn = await asyncpg.connect(self.db)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM budget_leases WHERE api_key_id = $1", uuid.UUID(key_id)
                )
            )
        finally:
            await conn.close()

    def _redis_leases(self, key_id: str) -> int:
        with contextlib.closing(self._redis()) as client:
            return sum(client.hlen(name) for name in self._keys(client, key_id, "l"))

    async def add_used(self, key_id: str, period_start: datetime, tokens: int) -> None:
        """Add *tokens* to a counter's ``used`` (creating it), behind aigw's back."""
        if self.kind == "redis":
            start = int(period_start.timestamp())
            name = f"{self.prefix}{{{key_id}}}:b:{start}"
            await asyncio.to_thread(self._redis_hincrby, name, tokens)
            return
        conn = await asyncpg.connect(self.db)
        try:
            await conn.execute(
                "INSERT INTO budget_counters AS c (api_key_id, period_start, used) "
                "VALUES ($1, $2, $3) ON CONFLICT (api_key_id, period_start) "
                "DO UPDATE SET used = c.used + EXCLUDED.used",
                uuid.UUID(key_id),
                period_start,
                tokens,
            )
        finally:
            await conn.close()

    def _redis_hincrby(self, name: str, tokens: int) -> None:
        with contextlib.closing(self._redis()) as client:
            client.hincrby(name, "used", tokens)

    def ttl_ms(self, name: str) -> int:
        with contextlib.closing(self._redis()) as client:
            return int(client.pttl(name))

    def all_keys(self) -> list[str]:
        with contextlib.closing(self._redis()) as client:
            return sorted(client.scan_iter(match=f"{self.prefix}*", count=1000))

    def drop(self) -> None:
        """Delete this test's Redis keys (its prefix only; never FLUSHALL)."""
        with contextlib.closing(self._redis()) as client:
            names = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if names:
                client.delete(*names)


@pytest.fixture(params=["pg", "redis"])
async def store(request: pytest.FixtureRequest, db: str) -> AsyncIterator[StoreView]:
    """The store under test (see the module docstring)."""
    if request.param == "redis" and (reason := redis_missing()) is not None:
        pytest.skip(reason)
    view = StoreView(request.param, db)
    yield view
    if view.kind == "redis":
        await asyncio.to_thread(view.drop)


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a
    store that hangs); yields ``host:port``."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()

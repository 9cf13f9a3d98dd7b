"""Shared checks for the reliability suite: what a proper error looks like, how
many rows each table holds, raw HTTP/1.1 over a socket, and one real gateway
process per module."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from aigw.crypto import KeyRing, key_code_aad, mask_secret
from tests.conftest import ADMIN_TOKEN, ENCRYPTION_KEYS, TOKEN_PEPPER, empty_database_now
from tests.fakes import FakeUpstream, start_fake_upstream
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.responses import FakeResponses, start_fake_responses
from tests.fakes.wire import serve_in_loop
from tests.proxy.conftest import create_provider
from tests.proxy.conftest import gateway as gateway  # the fixture openai_app and anthropic_app use
from tests.support import Gateway, start_gateway

TABLES = (
    "providers",
    "provider_models",
    "api_keys",
    "idempotency_records",
    "audit_log",
    "usage_records",
)
PROBLEM_FIELDS = {"type", "title", "status", "code", "detail"}


def assert_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx answered as RFC 9457 problem+json with a stable code."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), (
        response.headers.get("content-type"),
        response.text[:200],
    )
    body = response.json()
    assert body.keys() >= PROBLEM_FIELDS, body
    assert body["status"] == response.status_code
    assert isinstance(body["code"], str) and body["code"], body
    assert response.headers.get("x-aigw-request-id"), dict(response.headers)
    return body


def assert_openai_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx in OpenAI's ``{"error": {message, type, param, code}}`` envelope."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= error.keys(), error
    assert isinstance(error["message"], str) and error["message"]
    return error


async def row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}
    finally:
        await conn.close()


async def median_seconds(call: Callable[[], Awaitable[Any]], runs: int = 7) -> float:
    """Median wall time of *call* after one warm-up run."""
    await call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def median_cpu_seconds(call: Callable[[], Awaitable[Any]], runs: int = 7) -> float:
    """Median CPU time of this process over *call*, after one warm-up run: for work
    done in this process (an app in process, its threads), this counts all of it
    and none of what other processes on a busy machine take, which wall time also
    counts (a 2.6 ms body measured 18.5 ms under load)."""
    await call()
    samples = []
    for _ in range(runs):
        started = time.process_time()
        await call()
        samples.append(time.process_time() - started)
    return statistics.median(samples)


# --- raw HTTP/1.1 ---------------------------------------------------------------------------


def host_port(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    assert parsed.host and parsed.port
    return parsed.host, parsed.port


def raw_exchange(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send *data* as is and read until the server closes or goes quiet for *timeout*."""
    with socket.create_connection(host_port(url), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    """What *sock* receives until the peer closes, resets, or its timeout passes."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def parse_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream into HTTP/1.1 responses (Content-Length framed)."""
    responses = []
    while raw.startswith(b"HTTP/1."):
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", len(rest)))
        responses.append((status, headers, rest[:length]))
        raw = rest[length:]
    return responses


# --- a real gateway -------------------------------------------------------------------------


def gateway_environment(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "AIGW_DATABASE_URL": database_url,
        "AIGW_DATA_DIR": str(data_dir),
        "AIGW_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIGW_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
        "AIGW_TOKEN_PEPPER": TOKEN_PEPPER,
        "AIGW_LOG_LEVEL": "INFO",
        **extra,
    }


@contextlib.contextmanager
def running_gateway(
    database_url: str, root: Path, *, log_name: str = "gateway.log", **extra: str
) -> Iterator[Gateway]:
    """``aigw serve`` on :func:`gateway_environment` (*extra* added), its data in
    ``root/data`` and its log at ``root/log_name``; stopped on exit.

    The database is emptied first: a test before it on this xdist worker may have
    left keys sealed under another key ring, and ``aigw serve`` refuses to start on
    them (exit 2, which :func:`start_gateway` cannot tell from a taken port)."""
    empty_database_now(database_url)
    env = gateway_environment(database_url, root / "data", **extra)
    gateway = start_gateway(env, root / log_name)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def module_gateway(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One ``aigw serve`` process shared by a module's tests (1 MiB body limit, so
    the over-limit cases stay quick)."""
    root = tmp_path_factory.mktemp("gateway")
    with running_gateway(database_url, root, AIGW_MAX_BODY_BYTES=str(1024 * 1024)) as gateway:
        yield gateway


async def seed_keys(
    database_url: str,
    provider_id: str,
    count: int,
    *,
    alias: str = "seeded-{index:05d}",
    key_code: str = "sk-seeded-{index}",
    keyring: KeyRing | None = None,
) -> dict[uuid.UUID, str]:
    """Insert *count* keys on the provider's first model directly, sealed like the
    service seals them (so start-up checks pass); returns id -> key code."""
    keyring = keyring or KeyRing.parse(ENCRYPTION_KEYS)
    conn = await asyncpg.connect(database_url)
    try:
        model_id = await conn.fetchval(
            "SELECT id FROM provider_models WHERE provider_id = $1 ORDER BY position LIMIT 1",
            uuid.UUID(provider_id),
        )
        rows, codes = [], {}
        for index in range(count):
            key_id = uuid.uuid4()
            code = key_code.format(index=index)
            codes[key_id] = code
            rows.append(
                (
                    key_id,
                    alias.format(index=index),
                    uuid.UUID(provider_id),
                    model_id,
                    keyring.encrypt(code, key_code_aad(key_id)),
                    mask_secret(code),
                    uuid.uuid4().bytes + uuid.uuid4().bytes,
                    "aigw-seeded",
                )
            )
        # One statement, as a bulk write through the product would be: the count
        # triggers (migration 0007) run per statement, and 3,000 single-row
        # INSERTs in one transaction upserted the same count rows 3,000 times,
        # ~15 ms a row by the end (50 s of PostgreSQL for one seed).
        await conn.execute(
            "INSERT INTO api_keys (id, alias, provider_id, model_id, key_code_ciphertext,"
            " key_code_masked, token_hash, token_prefix, input_limit)"
            " SELECT *, 0 FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[],"
            " $5::text[], $6::text[], $7::bytea[], $8::text[])",
            *(list(column) for column in zip(*rows, strict=True)),
        )
    finally:
        await conn.close()
    return codes


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_usable(gateway: Gateway, token: str, timeout: float = 5.0) -> None:
    """Wait until *gateway*'s key cache has the key (``/v1/models`` answers 200)."""
    deadline = time.monotonic() + timeout
    while (
        httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
    ).status_code != 200:
        assert time.monotonic() < deadline, "the key never reached the key cache"
        time.sleep(0.05)


def gateway_key(
    gateway: Gateway, upstream_url: str, provider: str, model: str, **key: Any
) -> dict[str, Any]:
    """Through a real gateway's admin API: a provider *provider* on *upstream_url*
    serving *model*, and an enabled key on it (*key*: its other fields), once the
    gateway can use it; returns the key as created (``token`` included)."""
    with gateway.admin() as admin:
        created = admin.post(
            "/providers",
            json={"name": provider, "base_url": upstream_url, "models": [{"name": model}]},
        )
        assert created.status_code == 201, created.text
        response = admin.post(
            "/apikeys",
            json={"provider": provider, "model": model, "status": "enabled", **key},
        )
        assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    wait_usable(gateway, body["token"])
    return body


# --- the app in process, with a fake upstream ---------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    """The scriptable fake upstream (tests.fakes.upstream) as a process, per module."""
    upstream = start_fake_upstream()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture
def fresh_fake(fake: FakeUpstream) -> FakeUpstream:
    """The module's fake upstream with zeroed counters and the default scenario."""
    fake.reset()
    return fake


@pytest.fixture
async def inproc(
    make_settings: Callable[..., Any], admin_headers: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: ``await inproc(**settings)`` runs the app in process (lifespan
    included) and returns it with ``app.admin``, an admin httpx client."""
    from aigw.app import create_app

    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Any:
            app = create_app(make_settings(**{"usage_flush_interval": 0.02, **overrides}))
            await stack.enter_async_context(app.router.lifespan_context(app))
            app.admin = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://aigw.test",
                    headers=admin_headers,
                    timeout=30,
                )
            )
            return app

        yield start


def client_for(app: Any, token: str | None = None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://aigw.test",
        headers=headers,
        timeout=30,
    )


async def provider_and_key(
    app: Any, base_url: str, *, name: str | None = None, **key_overrides: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A provider at *base_url* and an enabled key on it, in the key cache."""
    from tests.proxy.conftest import MODEL, create_key, create_provider, wait_for

    provider_name = name or unique("prov")
    provider = await create_provider(app.admin, base_url, name=provider_name, models=(MODEL,))
    key = await create_key(app.admin, provider=provider_name, **key_overrides)
    token_hash = app.state.hasher.hash(key["token"])

    async def cached() -> bool:
        return app.state.keys.get(token_hash) is not None

    await wait_for(cached, 5.0)
    return provider, key


# --- the app served in the test's loop, on the Responses and Anthropic fakes -------------

CLAUDE = "claude-sonnet-4-5"


@pytest.fixture
async def fake_responses() -> AsyncIterator[FakeResponses]:
    """The fake Responses API (``/v1/responses``, ``/v1/embeddings``, chat)."""
    state, runner = await start_fake_responses()
    yield state
    await runner.cleanup()


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[tuple[FakeAnthropic, str]]:
    """The fake Anthropic Messages API and its base URL."""
    state = FakeAnthropic()
    async with serve_in_loop(state.app()) as url:
        yield state, url + "/v1"


@pytest.fixture
async def openai_app(gateway: Any, fake_responses: FakeResponses) -> Any:
    """A served gateway with an ``openai`` provider on :func:`fake_responses`."""
    app = await gateway()
    await create_provider(app.admin, fake_responses.url)
    return app


@pytest.fixture
async def anthropic_app(gateway: Any, fake_anthropic: tuple[FakeAnthropic, str]) -> Any:
    """A served gateway with an ``anthropic`` provider, ``fake``, serving :data:`CLAUDE`."""
    app = await gateway()
    _, url = fake_anthropic
    await create_provider(app.admin, url, name="fake", kind="anthropic", models=(CLAUDE,))
    return app


# --- canaries: secrets that must never show up outside their ciphertext --------------------

# Key codes the suite's helpers generate (tests.conftest.key_body, tests.proxy.conftest)
# and the canaries of test_canaries.py: the full code never belongs in a log line.
SECRET_PATTERNS = re.compile(
    r"sk-test-[0-9a-f]{24}|sk-upstream-[0-9a-f]{16}|sk-e2e-upstream-secret|cnry[0-9a-f]{16}"
)


class SecretWatch(logging.Handler):
    """Every log record of the session, formatted with its traceback, that matches
    :data:`SECRET_PATTERNS`."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records = 0
        self.leaks: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        try:
            text = self.format(record)
        except Exception:  # a record that cannot format cannot leak either
            return
        if SECRET_PATTERNS.search(text):
            self.leaks.append(text[:2000])


SECRET_WATCH = SecretWatch()
FINAL_CHECK = "test_no_secret_in_any_log_of_the_session"


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(SECRET_WATCH)
    # The gateway's own loggers at DEBUG, so the watch sees everything they say.
    logging.getLogger("aigw").setLevel(logging.DEBUG)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The session-wide secret check runs after every other test."""
    last = [item for item in items if item.name == FINAL_CHECK]
    for item in last:
        items.remove(item)
        items.append(item)


class Matrix:
    """Runs a table of cases inside one test (one app start instead of hundreds) and
    reports every failing case by name, not just the first."""

    def __init__(self) -> None:
        self.count = 0
        self.failures: list[str] = []

    @contextlib.contextmanager
    def case(self, name: str) -> Iterator[None]:
        self.count += 1
        try:
            yield
        except AssertionError as exc:
            self.failures.append(f"{name}: {str(exc)[:400]}")

    def check(self) -> None:
        assert not self.failures, (
            f"{len(self.failures)} of {self.count} cases failed:\n" + "\n".join(self.failures)
        )

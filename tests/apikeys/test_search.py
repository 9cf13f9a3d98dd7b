"""``GET /apikeys`` search against a brute-force filter of the same rows.

Every query shape the search serves differently — one- and two-character
``q`` (the short-gram index), longer ``q`` (trigrams), few matches (fetched and
sorted) and many (a walk along the sort index), filters without ``q`` — must
give exactly the rows, the order, the pages and the ``total`` that filtering
all keys by hand gives, before and after ANALYZE (which changes the plans).
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql

from aigw.apikeys import repository
from aigw.apikeys.models import ApiKey
from aigw.apikeys.repository import DENSE_SHARE, ApiKeyRepository, KeyConditions
from tests.conftest import key_body

pytestmark = pytest.mark.usefixtures("provider")

TEAMS = ["ml", "Payments", "search", "ÄBC-data", "web", "mlops", "zz-top"]
SORTS = ["alias", "-alias", "created_at", "-created_at", "updated_at", "-updated_at"]
QUERIES: list[dict[str, str]] = [
    {"q": "a"},  # one character, in most aliases: a walk along the sort index
    {"q": "A"},  # the same, upper case
    {"q": "z"},  # one character, few aliases
    {"q": "ml"},  # two characters, clustered in alias order
    {"q": "ML", "usage_limit": "use_anyway"},
    {"q": "l-", "status": "disabled"},
    {"q": "äb"},  # two characters, non-ASCII, lower-cased
    {"q": "_"},  # a LIKE wildcard, literal here
    {"q": "%"},
    {"q": "qq"},  # matches nothing
    {"q": "ments-"},  # trigram index
    {"q": "mlops-0", "model": "gpt-4"},
    {"status": "disabled"},
    {"usage_limit": "use_anyway"},
    {"status": "enabled", "usage_limit": "reject", "model": "gpt-4o-mini"},
    {},
]


async def _seed(client: httpx.AsyncClient, n: int) -> None:
    rng = random.Random(15)
    for i in range(n):
        team = TEAMS[i % len(TEAMS)]
        body = key_body(
            alias=f"{team}-{i:03d}" + ("_x" if i % 11 == 0 else ""),
            status="disabled" if i % 3 == 0 else "enabled",
            usage_limit="use_anyway" if rng.random() < 0.3 else "reject",
            model="gpt-4" if i % 4 == 0 else "gpt-4o-mini",
        )
        response = await client.post("/apikeys", json=body)
        assert response.status_code == 201, response.text


async def _all_keys(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/apikeys", params={"limit": 200})
    assert response.status_code == 200
    page = response.json()
    assert page["next_cursor"] is None
    return list(page["items"])


def _expected(keys: list[dict[str, Any]], params: dict[str, str], sort: str) -> list[str]:
    def keep(key: dict[str, Any]) -> bool:
        if "q" in params and params["q"].lower() not in key["alias"].lower():
            return False
        return all(key[field] == params[field] for field in ("status", "usage_limit", "model")
                   if field in params)  # fmt: skip

    field = sort.lstrip("-")

    def order(key: dict[str, Any]) -> tuple[Any, ...]:
        if field == "alias":
            return (key["alias"].lower(),)
        return (datetime.fromisoformat(key[field]), uuid.UUID(key["id"]).bytes)

    rows = sorted(filter(keep, keys), key=order, reverse=sort.startswith("-"))
    return [key["id"] for key in rows]


async def _search(client: httpx.AsyncClient, params: dict[str, str], sort: str) -> list[str]:
    """Every page, by cursor; each page's total must equal the whole result's length."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor: str | None = None
    for _ in range(100):
        query = {**params, "sort": sort, "limit": "4", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/apikeys", params=query)
        assert response.status_code == 200, (query, response.text)
        page = response.json()
        ids += [item["id"] for item in page["items"]]
        totals.add(page["total"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert totals == {len(ids)}, (params, sort, totals, len(ids))
    return ids


@pytest.mark.parametrize("probe_rows", [2_000, 3], ids=["probe-finds-page", "probe-falls-short"])
async def test_every_search_shape_matches_a_brute_force_filter(
    client: httpx.AsyncClient, db: str, probe_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With at most 3 rows the bounded walk is never tried, so the fallback (fetch
    # every match, then sort) answers every sparse search; with 2,000 it is tried.
    monkeypatch.setattr(repository, "PROBE_ROWS", probe_rows)
    await _seed(client, 70)
    keys = await _all_keys(client)
    assert len(keys) == 70
    for analyzed in (False, True):
        if analyzed:  # the planner now knows the table's size: other plans, same answers
            conn = await asyncpg.connect(db)
            try:
                await conn.execute("ANALYZE api_keys")
            finally:
                await conn.close()
        for params in QUERIES:
            for sort in SORTS:
                want = _expected(keys, params, sort)
                got = await _search(client, params, sort)
                assert got == want, (analyzed, params, sort)
    # Not vacuous: with q, empty, sparse (fetched, then sorted) and dense (a walk
    # along the sort index) results all occur.
    sizes = {len(_expected(keys, p, "alias")) for p in QUERIES if "q" in p}
    assert 0 in sizes
    assert any(s * DENSE_SHARE >= len(keys) for s in sizes)
    assert any(0 < s * DENSE_SHARE < len(keys) for s in sizes)


@pytest.mark.parametrize("q", ["m", "ml", "äb"])
async def test_short_terms_are_served_by_the_short_gram_index(db: str, q: str) -> None:
    """The query's expression must be the indexed one, or every short search reads the table."""
    where = ApiKeyRepository.conditions(KeyConditions(q=q))
    stmt = select(func.count()).select_from(ApiKey).where(*where)
    sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    conn = await asyncpg.connect(db)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql))
    finally:
        await conn.close()
    assert "ix_api_keys_alias_short_grams" in plan, plan

"""``GET /apikeys`` search against a brute-force filter of the same rows.

Every way the search can find a page — a walk along the sort index (whole or
bounded), a fetch of every match through the filters' indexes (the gram GIN
index for one- and two-character ``q``, trigrams for longer ones, the rarest
gram or a scan for longer ones pg_trgm takes no trigram of two letters from),
a bounded walk that falls short and fetches — must give exactly the rows, the
order, the pages and the ``total`` that filtering all keys by hand gives,
before and after ANALYZE (which changes the plans), and after keys change (the
counters behind ``total`` follow every write).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import Text, column, func, literal, select, table

from aigw.apikeys import search, service
from aigw.apikeys.models import ApiKey
from tests.conftest import key_body

pytestmark = pytest.mark.usefixtures("provider")

TEAMS = ["ml", "Payments", "search", "ÄBC-data", "web", "mlops", "zz-top", "Éclair-Жук"]
SORTS = ["alias", "-alias", "created_at", "-created_at", "updated_at", "-updated_at"]
QUERIES: list[dict[str, str]] = [
    {"q": "a"},  # one character, in most aliases
    {"q": "A"},  # the same, upper case
    {"q": "z"},  # one character, few aliases
    {"q": "ml"},  # two characters, clustered in alias order
    {"q": "ML", "usage_limit": "use_anyway"},
    {"q": "l-", "status": "disabled"},
    {"q": "äb"},  # two characters, non-ASCII, lower-cased
    {"q": "Ä"},  # one non-ASCII character, upper case
    {"q": "éc"},
    {"q": "ЖУ"},  # Cyrillic, upper case
    {"q": "_"},  # a LIKE wildcard, literal here
    {"q": "%"},
    {"q": "qq"},  # matches nothing
    {"q": "ments-"},  # trigram index
    {"q": "mlops-0", "model": "gpt-4"},
    {"q": "ЖУК-0"},
    {"q": "-071"},  # one key, by trigrams
    {"q": "%-0"},  # LIKE wildcards in a long term: literal, so nothing
    {"q": "0\\_x"},  # a backslash, literal too
    {"q": "0_x"},  # literal underscore: the "_x" keys ending in 0, no others
    # No two letters or digits in a row: no trigram narrows these down.
    {"q": "s-0"},  # the keys holding "s-", or all of them (a scan)
    {"q": "P-0", "status": "enabled"},
    {"q": "s-0", "provider": "second", "model": "gpt-4o-mini"},
    {"q": "s-0_x"},  # its rarest gram "0_" is held by a key it does not match
    {"q": "c-d"},
    {"q": "R-Ж"},  # non-ASCII, upper case
    {"q": "%%%"},  # wildcards only, literal: nothing
    {"q": "\\\\\\"},  # backslashes only: nothing
    # Longer than three characters and no trigram: the rarest gram, or a scan.
    {"q": "-Жук"},
    {"q": "R-ЖУ", "status": "disabled"},
    {"q": "%%%%"},
    {"q": "s-0-"},
    {"status": "disabled"},
    {"usage_limit": "use_anyway"},
    {"status": "disabled", "provider": "second"},
    {"status": "enabled", "usage_limit": "reject", "model": "gpt-4o-mini"},
    {"q": "o", "provider": "openai-main", "model": "gpt-4o-mini"},
    {"provider": "nobody"},
    {},
]
# How page() finds the page: as planned, or forced down each path (all must agree).
PLANS: dict[str, Callable[..., int | None]] = {
    "planned": search.plan,
    "walk": lambda matches, keys, limit, fetch=None: None,
    "fetch": lambda matches, keys, limit, fetch=None: 0,
    "short-walk-then-fetch": lambda matches, keys, limit, fetch=None: 3,
}


async def _seed(client: httpx.AsyncClient, n: int) -> None:
    second = {
        "name": "second",
        "kind": "openai",
        "base_url": "https://example.com/v1",
        "models": [{"name": "gpt-4o-mini"}],
    }
    assert (await client.post("/providers", json=second)).status_code == 201
    rng = random.Random(15)
    for i in range(n):
        team = TEAMS[i % len(TEAMS)]
        body = key_body(
            alias=f"{team}-{i:03d}" + ("_x" if i % 11 == 0 else ""),
            status="disabled" if i % 3 == 0 else "enabled",
            usage_limit="use_anyway" if rng.random() < 0.3 else "reject",
            model="gpt-4" if i % 4 == 0 else "gpt-4o-mini",
            provider="second" if i % 5 == 0 else "openai-main",
        )
        if i % 5 == 0:
            body["model"] = "gpt-4o-mini"
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
        fields = ("status", "usage_limit", "model", "provider")
        return all(key[f] == params[f] for f in fields if f in params)

    field = sort.lstrip("-")

    def order(key: dict[str, Any]) -> tuple[Any, ...]:
        if field == "alias":
            return (key["alias"].lower(),)
        return (datetime.fromisoformat(key[field]), uuid.UUID(key["id"]).bytes)

    rows = sorted(filter(keep, keys), key=order, reverse=sort.startswith("-"))
    return [key["id"] for key in rows]


# One page of a search: its ids, its total, the cursor to the next page (or None).
PageFetch = Callable[[int, str | None], Awaitable[tuple[list[str], int, str | None]]]


async def _walk(fetch: PageFetch, limit: int, rest: int | None, label: object) -> list[str]:
    """Every page, by cursor (the first of *limit* keys, the others of *rest* if
    given, else of *limit*); each page's total must equal the whole result's length."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor: str | None = None
    for _ in range(200):
        if cursor is not None and rest is not None:
            limit = rest
        items, total, cursor = await fetch(limit, cursor)
        ids += items
        totals.add(total)
        if cursor is None:
            break
    assert totals == {len(ids)}, (label, totals, len(ids))
    return ids


async def _search(
    client: httpx.AsyncClient,
    params: dict[str, str],
    sort: str,
    limit: int = 5,
    rest: int | None = None,
) -> list[str]:
    """:func:`_walk` over ``GET /apikeys``."""

    async def fetch(limit: int, cursor: str | None) -> tuple[list[str], int, str | None]:
        query = {
            **params,
            "sort": sort,
            "limit": str(limit),
            **({"cursor": cursor} if cursor else {}),
        }
        response = await client.get("/apikeys", params=query)
        assert response.status_code == 200, (query, response.text)
        page = response.json()
        return [item["id"] for item in page["items"]], page["total"], page["next_cursor"]

    return await _walk(fetch, limit, rest, (params, sort))


async def _search_in_process(
    app: Any, params: dict[str, str], sort: str, limit: int, rest: int | None = None
) -> list[str]:
    """:func:`_walk` through the service ``GET /apikeys`` calls (the filters, the
    cursor, the count and the page), without the HTTP around it: the many searches
    of one test cost a third of the CPU (the HTTP path's own checks page through
    it in every run)."""
    filters = search.KeyFilters(**params)

    async def fetch(limit: int, cursor: str | None) -> tuple[list[str], int, str | None]:
        async with app.state.sessionmaker() as session:
            page = await service.search_api_keys(
                session, filters, sort=sort, limit=limit, cursor=cursor
            )
        return [str(item["id"]) for item in page.items], page.total, page.next_cursor

    return await _walk(fetch, limit, rest, (params, sort))


async def _sql(db: str, *statements: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db)
    try:
        rows: list[asyncpg.Record] = []
        for statement in statements:
            rows = await conn.fetch(statement)
        return rows
    finally:
        await conn.close()


def _page_sizes(i: int) -> tuple[int, int | None]:
    """How the *i*-th search of a run is paged: every page of 5 keys (over HTTP),
    a first page of 5 then the rest at once (a cursor mid-result), or all at once
    (four times as often: every row, the order and the total, in one call).
    Searches rotate through these by query, sort and run (i = run + query +
    sort), so every sort is walked in small pages under every plan, and over five
    runs every query and sort meets a cursor, at a fifth of the requests."""
    return ((5, None), (5, 100), (100, None), (100, None), (100, None), (100, None))[i % 6]


async def _search_as(
    client: httpx.AsyncClient,
    app: Any,
    params: dict[str, str],
    sort: str,
    i: int,
    *,
    over_http: bool = True,
) -> tuple[list[str], tuple[int, int | None]]:
    """:func:`_search` paged as :func:`_page_sizes` says for *i*: the small-page
    walks over HTTP (unless not *over_http*), the others through the service in
    process (the same search, a third of the CPU)."""
    limit, rest = _page_sizes(i)
    if over_http and rest is None and limit == 5:
        return await _search(client, params, sort, limit), (limit, rest)
    return await _search_in_process(app, params, sort, limit, rest), (limit, rest)


async def test_every_search_shape_matches_a_brute_force_filter(
    client: httpx.AsyncClient, app: Any, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every query and sort, each way page() can find a page (as planned, or
    forced down each path, or kept by the count of a trigram-served term
    whatever its number of matches), on one set of keys."""
    await _seed(client, 72)
    keys = await _all_keys(client)
    assert len(keys) == 72
    # Forced paths once, after ANALYZE; the planned one also before it (the
    # planner then knows the table's size: other plans, same answers).
    runs = [("planned", False), *((how, True) for how in PLANS), ("kept", True)]
    share = search.COUNT_KEEPS_PAGE_SHARE
    for run, (how, analyzed) in enumerate(runs):
        monkeypatch.setattr(search, "plan", PLANS.get(how, search.plan))
        # 0: the count keeps the page of every trigram-served term (1 in 10 keys
        # or fewer by default: only the rarest terms of these few keys).
        monkeypatch.setattr(search, "COUNT_KEEPS_PAGE_SHARE", 0 if how == "kept" else share)
        if analyzed and not runs[run - 1][1]:
            await _sql(db, "ANALYZE api_keys")
        for q, params in enumerate(QUERIES):
            for s, sort in enumerate(SORTS):
                # The HTTP layer (parameters, cursor, JSON) does not depend on how
                # page() finds a page: the first run walks over HTTP, the others in
                # process (~2 s of CPU less; the same walks).
                got, pages = await _search_as(
                    client, app, params, sort, run + q + s, over_http=run == 0
                )
                assert got == _expected(keys, params, sort), (how, analyzed, params, sort, pages)
    # Not vacuous: empty results, one-key results and most-key results all occur.
    sizes = {len(_expected(keys, p, "alias")) for p in QUERIES}
    assert 0 in sizes and 1 in sizes and max(sizes) > len(keys) // 2


async def test_totals_follow_every_change_to_the_keys(client: httpx.AsyncClient, db: str) -> None:
    """The counters behind ``total`` change with the keys, whoever writes: the API
    (create, update, delete) and plain SQL alike."""
    await _seed(client, 40)
    keys = await _all_keys(client)
    rng = random.Random(7)
    for key in rng.sample(keys, 12):
        change = rng.choice(
            [
                {"alias": key["alias"].upper() + "-Renamed"},
                {"status": "enabled" if key["status"] == "disabled" else "disabled"},
                {"usage_limit": "reject" if key["usage_limit"] == "use_anyway" else "use_anyway"},
                {"model": "gpt-4" if key["model"] == "gpt-4o-mini" else "gpt-4o-mini"},
                {"input_limit": 5},  # not counted: the counters must not move
            ]
        )
        if "model" in change and key["provider"] == "second":
            change = {"status": "disabled"}
        response = await client.patch(f"/apikeys/{key['id']}", json=change)
        assert response.status_code == 200, response.text
    for key in rng.sample(keys, 5):
        await client.delete(f"/apikeys/{key['id']}")
    # One statement changing many rows, and one swapping two aliases.
    await _sql(
        db,
        "UPDATE api_keys SET status = 'enabled' WHERE alias_lower LIKE 'ml%'",
        "UPDATE api_keys SET alias = CASE alias WHEN 'web-004' THEN 'tmp' ELSE alias END "
        "WHERE alias IN ('web-004')",
        "UPDATE api_keys SET alias = 'Web-004' WHERE alias = 'tmp'",
    )
    keys = await _all_keys(client)
    for params in QUERIES:
        response = await client.get("/apikeys", params={**params, "limit": 1})
        assert response.json()["total"] == len(_expected(keys, params, "alias")), params
    # The counters equal a recount from scratch (zero rows aside).
    counted = "SELECT gram, status, usage_limit, provider_id, model_id, n FROM api_key_counts "
    counted += "WHERE n <> 0 ORDER BY 1, 2, 3, 4, 5"
    kept = await _sql(db, counted)
    rebuilt = await _sql(db, "SELECT aigw_rebuild_key_counts()", counted)
    assert [tuple(r) for r in kept] == [tuple(r) for r in rebuilt]
    assert all(r["n"] > 0 for r in kept)
    # TRUNCATE (as the tests' clean-up does to a table of thousands of rows) empties them.
    assert (await _sql(db, "TRUNCATE api_keys CASCADE", "SELECT count(*) FROM api_key_counts"))[0][
        0
    ] == 0


async def test_pages_follow_postgresqls_own_lower_casing(client: httpx.AsyncClient) -> None:
    """``sort=alias`` orders by PostgreSQL's ``lower(alias)``; the cursor carries that
    value, so keys whose alias Python lower-cases otherwise (a final sigma) are
    neither repeated nor skipped between pages."""
    aliases = ["ΟΔΟΣ", "ΟΔΟΣ-2", "οδοσα", "ΟΔΟΣΑ-3", "ΣΣ", "σς-x", "Σ", "ς1", "ab", "AΣ"]
    for alias in aliases:
        assert (await client.post("/apikeys", json=key_body(alias=alias))).status_code in (201, 409)
    whole = [k["id"] for k in (await _all_keys(client))]
    for sort in ("alias", "-alias"):
        one_page = await _search(client, {}, sort, limit=200)
        paged = await _search(client, {}, sort, limit=1)
        assert paged == one_page, sort
        assert sorted(paged) == sorted(whole)


async def test_walks_read_only_the_index(client: httpx.AsyncClient, db: str) -> None:
    """Each sort index holds every column a search condition tests: the walk is an
    index-only scan (else every row passed is a heap fetch)."""
    await _seed(client, 10)
    await _sql(db, "VACUUM ANALYZE api_keys")
    ids = [uuid.uuid4(), uuid.uuid4()]
    conditions = search.KeyConditions(
        q="ab", status="enabled", usage_limit="reject", provider_ids=ids, model_ids=ids
    )
    for sort, index in (
        ("alias", "uq_api_keys_lower_alias"),
        ("-created_at", "ix_api_keys_created_at_id"),
        ("updated_at", "ix_api_keys_updated_at_id"),
    ):
        field = sort.lstrip("-")
        keys = search.sort_keys(ApiKey, field)
        walk = (
            select(*search._window_columns(keys))
            .where(*search._walk_conditions(ApiKey, conditions, "ab"))
            .order_by(*keys)
            .limit(10)
        )
        plan = await _explain(db, walk, "seqscan", "bitmapscan", "sort")
        assert f"Index Only Scan using {index}" in plan, plan


@pytest.mark.parametrize(
    ("term", "gram", "index"),
    [
        ("m", None, "ix_api_key_search_short_grams"),
        ("ml", None, "ix_api_key_search_short_grams"),
        ("äb", None, "ix_api_key_search_short_grams"),
        ("abc", None, "ix_api_key_search_three_grams"),  # three characters: exactly
        ("a-p", None, "ix_api_key_search_three_grams"),
        ("%%%", None, "ix_api_key_search_three_grams"),
        ("abcd", None, "ix_api_key_search_trgm"),
        ("a-p-", "a-", "ix_api_key_search_short_grams"),  # no trigram: its rarest gram
        ("%%%%", "%%", "ix_api_key_search_short_grams"),
    ],
)
async def test_fetches_use_the_term_index(db: str, term: str, gram: str | None, index: str) -> None:
    """The fetch's condition is the indexed expression, or every fetch reads the table."""
    found = search.Tally(term=term, matches=1, keys=100, gram=gram, candidates=1)
    assert not found.scans
    stmt = select(search._fetch_source(found).id).where(
        *search._fetch_conditions(_conditions_of(found), found)
    )
    plan = await _explain(db, stmt, "seqscan")
    assert index in plan, plan
    if index != "ix_api_key_search_trgm":
        assert "ix_api_key_search_trgm" not in plan, plan


def _conditions_of(found: search.Tally) -> search.KeyConditions:
    return search.KeyConditions(q=found.term)


async def test_a_term_without_a_trigram_never_goes_through_the_trigram_index(db: str) -> None:
    """A term pg_trgm takes no trigram of two letters or digits from is counted and
    fetched through its rarest gram (or by a scan when that gram is common), never
    through the trigram index, which would give it every key (all of them, each
    rechecked, for a term with no trigram at all: ~130 ms at 100k keys); a term
    with such a trigram is still counted through the trigram index. Either kind,
    a term of three characters or fewer is counted by ``api_key_counts`` alone."""
    weak = ["%%%", "\\" * 8, "%a_b\\c" * 10, "a-p", "-1-", "ЖУК", "%_" * 32, "a-p-", "-ЖУК"]
    strong = ["payments", "50%", "-ab-", "%a_bc", "zz%", "50%%", "zz%%"]
    for q in weak + strong:
        assert search.trigram_served(q) == (q in strong), q
        plan = await _explain(db, search.tally_statement(search.KeyConditions(q=q)), "seqscan")
        if len(q) <= search.COUNTED_GRAM_MAX:  # the counters alone, either way
            assert "api_key_search" not in plan, (q, plan)
        elif q in strong:
            assert "ix_api_key_search_trgm" in plan, (q, plan)
        else:
            assert "ix_api_key_search_trgm" not in plan, (q, plan)
            assert "ix_api_key_search_short_grams" in plan, (q, plan)
    # When the gram is common, the count and the fetch test every row instead.
    common = search.Tally(term="a-p-", matches=1, keys=100, gram="a-", candidates=90)
    assert common.scans and common.fetch_cost() == 100 * search.SCAN_TO_WALK
    stmt = select(search._fetch_source(common).id).where(
        *search._fetch_conditions(_conditions_of(common), common)
    )
    plan = await _explain(db, stmt)
    assert "Seq Scan on api_key_search" in plan and "Index" not in plan, plan


async def test_three_character_terms_are_counted_by_the_counters_alone(
    client: httpx.AsyncClient, db: str
) -> None:
    """A ``q`` of one to three characters, with or without a trigram (migration
    0010's three-character grams), is counted from ``api_key_counts`` alone: the
    count never reads ``api_key_search`` (a scan of it cost ~15 ms at 100k keys
    for ``t-0``). A four-character term still does, so the check can fail."""
    await _seed(client, 12)
    await _sql(db, "ANALYZE")

    def reads_of_the_search_table(plan: Any) -> int:
        nodes, loops = [plan[0]["Plan"]], 0
        while nodes:
            node = nodes.pop()
            if node.get("Relation Name") == "api_key_search":
                loops += int(node["Actual Loops"])
            nodes += node.get("Plans", [])
        return loops

    conn = await asyncpg.connect(db)
    try:
        for q, counted in (("a", True), ("-0", True), ("s-0", True), ("ml-", True),
                           ("%%%", True), ("s-00", False), ("s-0-", False)):  # fmt: skip
            sql, args = _compiled(search.tally_statement(search.KeyConditions(q=q)))
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
            assert (reads_of_the_search_table(json.loads(plan)) == 0) == counted, q
    finally:
        await conn.close()


async def test_terms_without_a_trigram_match_by_gram_and_by_scan_alike(
    client: httpx.AsyncClient, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of finding a term with no trigram of two letters, forced, give
    what filtering all keys gives: every page, order and total, fetched or walked."""
    await _seed(client, 72)
    keys = await _all_keys(client)
    weak = [p for p in QUERIES if "q" in p and len(p["q"]) > search.COUNTED_GRAM_MAX]
    weak = [p for p in weak if not search.trigram_served(p["q"])]
    assert len(weak) >= 6
    run = 0
    try:
        for route in ("gram", "scan"):
            monkeypatch.setattr(search, "_scan_is_cheaper", lambda c, k, scan=route == "scan": scan)
            # The tally's statement is built once per shape and kept: built again
            # here, it takes the forced route (and is dropped again below, so no
            # later test in this process counts down a forced route).
            search._tally_statement.cache_clear()
            for how in ("planned", "fetch"):
                monkeypatch.setattr(search, "plan", PLANS[how])
                for q, params in enumerate(weak):
                    for s, sort in enumerate(SORTS):
                        got, pages = await _search_as(client, app, params, sort, run + q + s)
                        assert got == _expected(keys, params, sort), (
                            route,
                            how,
                            params,
                            sort,
                            pages,
                        )
                run += 1
    finally:
        monkeypatch.undo()
        search._tally_statement.cache_clear()
    assert {len(_expected(keys, p, "alias")) > 0 for p in weak} == {True, False}


async def test_trigram_served_terms_yield_a_trigram(db: str) -> None:
    """Where :func:`search.trigram_served` says the trigram index narrows a term
    down, pg_trgm does take a trigram from the pattern the count builds (the
    term lower-cased by PostgreSQL, escaped): else the index would give every
    key. Seen on a table of one row without trigrams: through the index, a
    pattern with a trigram finds no candidate, one without (a full index scan)
    finds the row."""
    rng = random.Random(15)
    alphabet = ["a", "B", "7", "%", "_", "\\", "-", " ", "é", "Ж", "\u212a", "İ", "ß", "ǅ"]
    terms = ["".join(rng.choices(alphabet, k=rng.randint(3, 9))) for _ in range(400)]
    terms += ["%%%", "a-p", "0_x", "\\" * 8, "%a_b\\c", "ab%", "%ab", "-ab-", "zz-top"]
    one_row = table("one_row", column("s", Text))
    served = {True: 0, False: 0}
    conn = await asyncpg.connect(db)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE one_row (s text) ON COMMIT DROP")
            await conn.execute("INSERT INTO one_row VALUES ('§')")
            await conn.execute("CREATE INDEX ON one_row USING gin (s gin_trgm_ops)")
            await conn.execute("SET LOCAL enable_seqscan = off")
            for term in terms:
                pattern = search._like_lowered(func.lower(literal(term, Text)))
                stmt = (
                    select(func.count())
                    .select_from(one_row)
                    .where(one_row.c.s.like(select(pattern).scalar_subquery()))
                )
                sql, args = _compiled(stmt)
                plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
                candidates = _index_rows(json.loads(plan))
                served[search.trigram_served(term)] += 1
                if search.trigram_served(term):
                    assert candidates == 0, term
                elif not any(ch.isalnum() for ch in term):
                    assert candidates == 1, term  # no trigram at all: a full index scan
    finally:
        await conn.close()
    assert served[True] > 50 and served[False] > 50, served


def _compiled(stmt: Any) -> tuple[str, list[Any]]:
    """*stmt*'s SQL for asyncpg and its arguments (bound, not rendered: a literal
    rendered by SQLAlchemy doubles its backslashes)."""
    from sqlalchemy.dialects.postgresql import asyncpg as dialect

    compiled = stmt.compile(dialect=dialect.dialect())
    return str(compiled), [compiled.params[name] for name in compiled.positiontup or ()]


def _index_rows(plan: Any) -> int:
    """The rows the plan's (only) Bitmap Index Scan gave."""
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if node["Node Type"] == "Bitmap Index Scan":
            return int(node["Actual Rows"])
        nodes += node.get("Plans", [])
    raise AssertionError(f"no index scan in {plan}")


async def test_fetches_without_a_term_use_the_keys_filter_indexes(db: str) -> None:
    """A rare provider or model alone is fetched through ``api_keys``' own indexes
    (``api_key_search`` has none on them: it would be read whole)."""
    conditions = search.KeyConditions(provider_ids=[uuid.uuid4()], model_ids=[uuid.uuid4()])
    nothing = search.Tally(term=None, matches=1, keys=100)
    stmt = select(search._fetch_source(nothing).id).where(
        *search._fetch_conditions(conditions, nothing)
    )
    plan = await _explain(db, stmt, "seqscan")
    assert "ix_api_keys_provider_id" in plan or "ix_api_keys_model_id" in plan, plan


async def _explain(db: str, stmt: Any, *disabled: str) -> str:
    """The plan of *stmt* with the planner's *disabled* methods off (tiny tables
    would otherwise be read whole, whatever the indexes)."""
    from sqlalchemy.dialects.postgresql import asyncpg as dialect

    sql = str(stmt.compile(dialect=dialect.dialect(), compile_kwargs={"literal_binds": True}))
    conn = await asyncpg.connect(db)
    try:
        async with conn.transaction():
            for method in disabled:
                await conn.execute(f"SET LOCAL enable_{method} = off")
            return "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql))
    finally:
        await conn.close()


def test_plan_fetches_few_matches_and_walks_many() -> None:
    keys, limit = 100_000, 51
    assert search.plan(1, keys, limit) == 0  # a lone match: fetch it
    assert search.plan(700, keys, limit) == 0
    assert search.plan(90_000, keys, limit) is None  # nearly all: walk until the page is full
    budget = search.plan(5_000, keys, limit)  # between: walk so far, then fetch
    assert budget is not None and 0 < budget < keys
    assert budget >= 2 * limit * keys // 5_000
    # A term its gram index gives exactly costs less a match to fetch than one
    # rechecked: the walk before such a fetch gives up sooner.
    exact = search.Tally(term="ml", matches=5_000, keys=keys)
    rechecked = search.Tally(term="payments", matches=5_000, keys=keys, candidates=5_000)
    assert exact.fetch_cost() < rechecked.fetch_cost()
    assert search.plan(5_000, keys, limit, exact.fetch_cost()) < budget


# Searches whose matches come from api_key_search: the fetch reads its term
# indexes and sort keys, a q of three characters or more is counted there.
TABLE_QUERIES: list[dict[str, str]] = [
    {"q": "ml"},
    {"q": "a", "status": "enabled"},
    {"q": "ments-"},
    {"q": "-0", "usage_limit": "use_anyway"},
    {"q": "renamed"},
    {"q": "ЖУК", "model": "gpt-4"},
    {"q": "_x"},
    {"status": "disabled", "provider": "second"},
]


async def _check_against(
    client: httpx.AsyncClient, app: Any, known: dict[str, dict[str, Any]], step: str, run: int
) -> None:
    """Every TABLE_QUERIES search, each sort, by cursor (paged as :func:`_page_sizes`
    says for the *run*-th check): the ids (so the order) and the total equal a
    filter over *known*, the keys as the writes' own responses left them."""
    keys = list(known.values())
    for q, params in enumerate(TABLE_QUERIES):
        for s, sort in enumerate(SORTS):
            got, pages = await _search_as(client, app, params, sort, run + q + s)
            assert got == _expected(keys, params, sort), (step, params, sort, pages)


async def test_the_search_table_follows_every_write(
    client: httpx.AsyncClient, app: Any, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``api_key_search`` (migration 0009) is what fetches and long-``q`` totals read:
    after creates, updates, token rotations, deletes and plain SQL, every search
    answers what a filter over the keys gives, the keys known from each write's
    response (or a GET of the key), not from a search."""
    monkeypatch.setattr(search, "plan", PLANS["fetch"])  # always fetch
    await _seed(client, 36)
    known = {k["id"]: k for k in await _all_keys(client)}
    assert len(known) == 36
    await _check_against(client, app, known, "created", 0)
    rng = random.Random(9)
    ids = sorted(known)
    for key_id in rng.sample(ids, 10):
        key = known[key_id]
        change = rng.choice(
            [
                {"alias": key["alias"].upper() + "-Renamed"},
                {"status": "enabled" if key["status"] == "disabled" else "disabled"},
                {"usage_limit": "reject" if key["usage_limit"] == "use_anyway" else "use_anyway"},
                {"input_limit": 7},  # no searched column changes but updated_at
            ]
        )
        response = await client.patch(f"/apikeys/{key_id}", json=change)
        assert response.status_code == 200, response.text
        known[key_id] = response.json()
    await _check_against(client, app, known, "updated", 1)
    for key_id in rng.sample(ids, 8):
        response = await client.post(f"/apikeys/{key_id}/token")
        assert response.status_code == 200, response.text
        known[key_id] = {k: v for k, v in response.json().items() if k != "token"}
    await _check_against(client, app, known, "rotated", 2)
    for key_id in rng.sample(ids, 6):
        assert (await client.delete(f"/apikeys/{key_id}")).status_code == 204
        del known[key_id]
    await _check_against(client, app, known, "deleted", 3)
    # Plain SQL: many rows in one statement, and a swap of two aliases through a third.
    await _sql(
        db,
        "UPDATE api_keys SET status = 'disabled', updated_at = now() WHERE alias_lower LIKE 'ml%'",
        "UPDATE api_keys SET alias = 'swap-tmp' WHERE alias_lower = 'web-004'",
        "UPDATE api_keys SET alias = 'web-004' WHERE alias_lower = 'web-012'",
        "UPDATE api_keys SET alias = 'web-012' WHERE alias = 'swap-tmp'",
    )
    for key_id in known:
        known[key_id] = (await client.get(f"/apikeys/{key_id}")).json()
    await _check_against(client, app, known, "plain SQL", 4)
    # The table equals a recomputation from api_keys; TRUNCATE empties it.
    table = "SELECT * FROM api_key_search ORDER BY id"
    kept = await _sql(db, table)
    rebuilt = await _sql(db, "SELECT aigw_rebuild_key_search()", table)
    assert len(kept) == len(known) and [tuple(r) for r in kept] == [tuple(r) for r in rebuilt]
    truncated = await _sql(db, "TRUNCATE api_keys CASCADE", "SELECT count(*) FROM api_key_search")
    assert truncated[0][0] == 0

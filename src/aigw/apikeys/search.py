"""``GET /apikeys``: the exact total, then one page, each at a bounded cost.

The total comes from ``api_key_counts`` (migration 0007) when ``q`` has at
most two characters (or there is none), and from the trigram index of
``api_key_search`` (migration 0009) otherwise: each candidate it gives is
tested on a narrow row, not on the key's wide one.
Knowing it exactly, the page is found one of two ways:

- a *walk* along the sort order's index, testing every condition on the index
  entry (an index-only scan) until a page is full: cheap per entry, but it
  passes every non-match before the page's last match;
- a *fetch* of every match from ``api_key_search`` (migration 0009), the
  narrow copy of what a search tests, through its gram or trigram GIN index
  for ``q``, sorted: it costs per match, about ``FETCH_TO_WALK`` times an
  entry a walk passes.

:func:`plan` weighs one against the other. Both find the same rows; only how
long that takes differs.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    case,
    cast,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.apikeys.models import SEARCH_FILTERS, ApiKey, api_key_counts, api_key_search
from aigw.db.filters import like_pattern
from aigw.providers.models import Provider, ProviderModel


@dataclass(frozen=True, slots=True)
class KeyFilters:
    """A search as the API takes it: provider and model by name."""

    q: str | None = None
    status: str | None = None
    provider: str | None = None
    model: str | None = None
    usage_limit: str | None = None


@dataclass(frozen=True, slots=True)
class KeyConditions:
    """A search with provider and model resolved to ids (an empty list matches nothing)."""

    q: str | None = None
    status: str | None = None
    usage_limit: str | None = None
    provider_ids: list[uuid.UUID] | None = None
    model_ids: list[uuid.UUID] | None = None


@dataclass(frozen=True, slots=True)
class Tally:
    """What the count found: ``term`` is ``q`` lower-cased by PostgreSQL (the folding
    ``alias_lower`` got), ``matches`` the exact total, ``keys`` every key."""

    term: str | None
    matches: int
    keys: int


SEARCH = api_key_search.c
SORT_FIELDS = ("alias", "created_at", "updated_at")
# The longest term api_key_counts and the gram GIN index (migration 0006) serve;
# pg_trgm serves longer ones.
SHORT_GRAM_MAX = 2
# Fetching a match (a term index of api_key_search, then its narrow row) costs
# about this many index entries passed by an index-only walk (measured at 100k
# keys, migration 0009: ~0.85 us vs ~0.17 us; ~1.2 us a match from api_keys' wide rows).
FETCH_TO_WALK = 5
# The page's columns: the key's own, and its provider's and model's names.
PAGE_COLUMNS = (
    ApiKey.id,
    ApiKey.alias,
    ApiKey.alias_lower,
    Provider.name.label("provider"),
    ProviderModel.name.label("model"),
    ApiKey.status,
    ApiKey.key_code_masked,
    ApiKey.token_prefix,
    ApiKey.input_limit,
    ApiKey.output_limit,
    ApiKey.usage_limit,
    ApiKey.budget_tokens,
    ApiKey.budget_period,
    ApiKey.rpm_limit,
    ApiKey.tpm_limit,
    ApiKey.created_at,
    ApiKey.updated_at,
    ApiKey.version,
)


def sort_keys(entity: Any, field: str) -> tuple[Any, ...]:
    """The ORDER BY of *field*: ``alias_lower`` is unique, so it orders alone;
    timestamps tie, so the id breaks ties, as in their indexes."""
    if field == "alias":
        return (entity.alias_lower,)
    return (getattr(entity, field), entity.id)


def plan(matches: int, keys: int, limit: int) -> int | None:
    """How to find a page of *limit* among *matches* of *keys* (all > 0): ``0`` to
    fetch every match, ``None`` to walk until the page is full, ``n`` to walk at
    most *n* index entries and fetch when they hold less than a page.

    A walk passes ``limit * keys / matches`` entries when the matches spread
    evenly, and every non-match before the page when they cluster; a fetch
    costs ``matches * FETCH_TO_WALK``. So: fetch when even a lucky walk costs
    more; otherwise walk, but no further than twice the even spread or half the
    cost of the fetch, whichever is more, and fetch after that. The worst case
    is then about one and a half fetches, however the matches lie.
    """
    even = math.ceil(limit * keys / matches)
    fetch = matches * FETCH_TO_WALK
    if even > fetch:
        return 0
    budget = max(2 * even, fetch // 2)
    return None if budget >= keys else budget


def _filters(table: Any, c: KeyConditions) -> list[ColumnElement[bool]]:
    """The conditions other than ``q``, on ``api_keys``, ``api_key_counts`` or
    ``api_key_search`` (the same column names)."""
    where: list[ColumnElement[bool]] = []
    if c.status:
        where.append(table.status == c.status)
    if c.usage_limit:
        where.append(table.usage_limit == c.usage_limit)
    if c.provider_ids is not None:
        where.append(table.provider_id.in_(c.provider_ids))
    if c.model_ids is not None:
        where.append(table.model_id.in_(c.model_ids))
    return where


def _like_lowered(term: ColumnElement[str]) -> ColumnElement[str]:
    """``'%' || term || '%'`` with ``\\``, ``%`` and ``_`` escaped, in SQL."""
    escaped = func.replace(func.replace(func.replace(term, "\\", "\\\\"), "%", "\\%"), "_", "\\_")
    return literal("%") + escaped + literal("%")


async def tally(session: AsyncSession, c: KeyConditions) -> Tally:
    """The exact total of *c*, every key, and ``q`` as PostgreSQL lower-cases it:
    one statement, which also picks the counter or the trigram index by the
    length of the lower-cased term (the one the page goes on to use)."""
    counts = api_key_counts.c

    def counted(gram: ColumnElement[str], *where: ColumnElement[bool]) -> Any:
        total = func.coalesce(func.sum(counts.n), 0)
        return select(total).where(counts.gram == gram, *where).scalar_subquery()

    everything = counted(literal(""))
    term: ColumnElement[Any] = literal(None, Text)
    if c.q is None:
        matches = counted(literal(""), *_filters(counts, c))
    else:
        term = func.lower(literal(c.q, Text))
        # The pattern as a subquery: evaluated once (an InitPlan), not again for
        # every candidate the trigram index gives (~0.3 us each). No ESCAPE
        # clause: it would wrap the pattern in like_escape() per candidate, and
        # the backslash _like_lowered escapes with is LIKE's default escape.
        pattern = select(_like_lowered(term)).scalar_subquery()
        scanned = (
            select(func.count())
            .select_from(api_key_search)
            .where(
                SEARCH.alias_lower.like(pattern),
                *_filters(SEARCH, c),
            )
            .scalar_subquery()
        )
        # Lower-casing never shortens a term (libc folds character for character;
        # ICU may lengthen one), so only a short q needs the database to choose.
        matches = (
            case(
                (func.length(term) <= SHORT_GRAM_MAX, counted(term, *_filters(counts, c))),
                else_=scanned,
            )
            if len(c.q) <= SHORT_GRAM_MAX
            else scanned
        )
    stmt = select(term, cast(matches, BigInteger), cast(everything, BigInteger))
    row = (await session.execute(stmt)).one()
    return Tally(term=row[0], matches=int(row[1]), keys=int(row[2]))


def _walk_conditions(entity: Any, c: KeyConditions, term: str | None) -> list[ColumnElement[bool]]:
    """Every condition, on columns the sort indexes hold (tested on the entry)."""
    where = _filters(entity, c)
    if term is not None:
        where.append(func.strpos(entity.alias_lower, term) > 0)
    return where


def _fetch_source(term: str | None) -> Any:
    """Where a fetch finds its matches: ``api_key_search`` for a term (its term
    indexes), ``api_keys`` for filters alone (its provider, model and status
    indexes)."""
    return ApiKey if term is None else SEARCH


def _fetch_conditions(c: KeyConditions, term: str | None) -> list[ColumnElement[bool]]:
    """Every condition on :func:`_fetch_source`, in the shapes its indexes serve."""
    if term is None:
        return _filters(ApiKey, c)
    where = _filters(SEARCH, c)
    if len(term) <= SHORT_GRAM_MAX:
        # A term this short is a substring exactly when it is one of the grams
        # (the indexed expression of migration 0009, called the same way).
        grams = func.aigw_alias_short_grams(SEARCH.alias_lower, type_=ARRAY(Text))
        where.append(grams.contains([term]))
    else:
        where.append(SEARCH.alias_lower.like(like_pattern(term), escape="\\"))
    return where


async def page(
    session: AsyncSession,
    c: KeyConditions,
    found: Tally,
    *,
    sort: str,
    after: tuple[object, ...] | None,
    limit: int,
) -> list[Any]:
    """Up to *limit* keys (rows of :data:`PAGE_COLUMNS`) in *sort* order after the cursor."""
    if found.matches == 0:
        return []
    descending = sort.startswith("-")
    field = sort.lstrip("-")

    def ordered(columns: tuple[Any, ...]) -> list[Any]:
        return [col.desc() if descending else col.asc() for col in columns]

    def after_where(columns: tuple[Any, ...]) -> list[ColumnElement[bool]]:
        if after is None:
            return []
        position, bound = tuple_(*columns), tuple_(*after[: len(columns)])
        return [position < bound if descending else position > bound]

    keys = sort_keys(ApiKey, field)
    how = plan(found.matches, max(found.keys, found.matches), limit)

    async def rows(ids: Any) -> list[Any]:
        stmt = (
            select(*PAGE_COLUMNS)
            .join(Provider, Provider.id == ApiKey.provider_id)
            .join(ProviderModel, ProviderModel.id == ApiKey.model_id)
            .where(ApiKey.id.in_(ids))
            .order_by(*ordered(keys))
        )
        return list((await session.execute(stmt)).all())

    if how is None:
        where = _walk_conditions(ApiKey, c, found.term)
        walk = select(ApiKey.id).where(*after_where(keys), *where)
        return await rows(walk.order_by(*ordered(keys)).limit(limit))
    if how > 0:
        # The first `how` entries after the cursor (an index-only scan: every
        # column selected is in the sort index), then the conditions on them.
        window = (
            select(*_window_columns(keys))
            .where(*after_where(keys))
            .order_by(*ordered(keys))
            .limit(how)
            .subquery("window")
        )
        window_keys = sort_keys(window.c, field)
        walk = (
            select(window.c.id)
            .where(*_walk_conditions(window.c, c, found.term))
            .order_by(*ordered(window_keys))
            .limit(limit)
        )
        walked = await rows(walk)
        # Any match among those entries precedes every match after them: a full
        # page found there is the page.
        if len(walked) == limit:
            return walked
    # With a term, the matches come from api_key_search (its term indexes, its
    # narrow rows), with the sort keys it holds, equal to the key's own (the same
    # transaction wrote them).
    source = _fetch_source(found.term)
    search_keys = sort_keys(source, field)
    where = [*_fetch_conditions(c, found.term), *after_where(search_keys)]
    if source is SEARCH:
        # api_key_search has no index in any sort order: the matches can only be
        # found through its term index, then sorted (no fence needed; one costs
        # ~1.3 ms for 5,000 matches).
        first = select(SEARCH.id).where(*where).order_by(*ordered(search_keys)).limit(limit)
        return await rows(first)
    labels = [k.label(f"k{i}") for i, k in enumerate(search_keys)]
    matched = (
        select(source.id, *labels)
        .where(*where)
        .cte("matched")
        .prefix_with("MATERIALIZED")  # a fence: find the matches first, then sort
    )
    first = (
        select(matched.c.id)
        .order_by(*ordered(tuple(matched.c[f"k{i}"] for i in range(len(keys)))))
        .limit(limit)
    )
    return await rows(first)


def _window_columns(keys: tuple[Any, ...]) -> list[Any]:
    """The sort keys and every column a condition tests: all in the sort's index."""
    columns = [*keys, ApiKey.id, ApiKey.alias_lower, *(getattr(ApiKey, f) for f in SEARCH_FILTERS)]
    return list({col.key: col for col in columns}.values())

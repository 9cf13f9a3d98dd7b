"""``GET /apikeys``: the exact total, then one page, each at a bounded cost.

The total comes from ``api_key_counts`` (migrations 0007 and 0010) when ``q``
has at most three characters (or there is none), and from ``api_key_search``
(migration 0009) otherwise: through its trigram index when ``q`` yields a
trigram of two letters or digits (:func:`trigram_served`), else through its
gram index with the rarest two-character gram of ``q``; either way each
candidate is tested on a narrow row, not on the key's wide one.
Knowing it exactly, the page is found one of two ways:

- a *walk* along the sort order's index, testing every condition on the index
  entry (an index-only scan) until a page is full: cheap per entry, but it
  passes every non-match before the page's last match;
- a *fetch* of every match from ``api_key_search`` (migration 0009), the
  narrow copy of what a search tests, through its gram, three-gram (migration
  0010) or trigram GIN index for ``q``, sorted: it costs per candidate the index gives, about
  ``FETCH_TO_WALK`` times an entry a walk passes.

:func:`plan` weighs one against the other. Both find the same rows; only how
long that takes differs.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

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
class PageRequest:
    """Which page a search wants: the sort (``-`` for descending), the cursor's
    sort keys, how many keys."""

    sort: str
    after: tuple[object, ...] | None
    limit: int


@dataclass(frozen=True, slots=True)
class Tally:
    """What the count found: ``term`` is ``q`` lower-cased by PostgreSQL (the folding
    ``alias_lower`` got), ``matches`` the exact total, ``keys`` every key.

    For a term of four characters or more that the trigram index cannot narrow
    down (see :func:`trigram_served`), ``gram`` is its two-character gram the
    fewest keys hold and ``candidates`` how many keys hold it (else ``gram`` is
    ``None`` and ``candidates`` equals ``matches``). The matches of such a term
    are found among those keys through the gram index, or by a scan of
    ``api_key_search`` when that costs less (:attr:`scans`).

    ``first`` is the page itself (its ids, in order) when the count found it
    on the way (:class:`PageRequest`, :func:`tally`), for the request in
    ``first_for``; else ``None``."""

    term: str | None
    matches: int
    keys: int
    gram: str | None = None
    candidates: int = 0
    first: tuple[uuid.UUID, ...] | None = None
    first_for: PageRequest | None = None

    @property
    def scans(self) -> bool:
        """Whether the term's matches are found by a scan of ``api_key_search``
        (its gram is so common that testing every row costs less)."""
        return self.gram is not None and _scan_is_cheaper(self.candidates, self.keys)

    def fetch_cost(self) -> int:
        """What a fetch of the matches costs, in index entries a walk passes."""
        if self.scans:
            return self.keys * SCAN_TO_WALK
        if self.term is not None and len(self.term) <= COUNTED_GRAM_MAX:
            return self.matches * EXACT_FETCH_TO_WALK
        return max(self.matches, self.candidates) * FETCH_TO_WALK


SEARCH = api_key_search.c
SORT_FIELDS = ("alias", "created_at", "updated_at")
# The longest term the gram GIN index (migration 0006) serves alone; pg_trgm
# serves longer ones, if it takes a trigram worth the name from them
# (trigram_served), else the gram index narrows them down.
SHORT_GRAM_MAX = 2
# The longest term api_key_counts counts (one to three characters, migrations
# 0007 and 0010): a three-character term is a substring exactly when it is one
# of the alias's three-character grams, which a GIN index of api_key_search
# gives (migration 0010), whatever the characters.
COUNTED_GRAM_MAX = 3
# pg_trgm takes a LIKE pattern's trigrams from its runs of word characters (a
# literal %, _ or \ ends a run like any other non-word character), padding a
# run with two spaces before and one after unless it touches the pattern's
# unescaped % there. In '%term%' a run of two or more, short of the whole term,
# yields a trigram holding two of them (" ab", "ab "), one of three or more
# "abc"; a run of one yields at most "  a" and " a ", which any key with a word
# starting with that letter has, and a term without word characters yields no
# trigram at all: the index then gives every key (a full index scan, each key
# rechecked), ~130 ms of PostgreSQL CPU for '%%%' at 100k keys. Only ASCII letters
# and digits are counted: whether another character is a word character depends
# on the database's LC_CTYPE (in the C locale none is), and counting one too few
# only sends a term to the gram index, where counting one too many could send a
# trigram-less term to the trigram index.
_WORD_PAIR = re.compile(r"[0-9A-Za-z]{2}")
# Fetching a match (a term index of api_key_search, then its narrow row) costs
# about this many index entries passed by an index-only walk (measured at 100k
# keys, migration 0009: ~0.85 us vs ~0.17 us; ~1.2 us a match from api_keys' wide rows).
FETCH_TO_WALK = 5
# A match of a term of one to three characters, which its gram index gives
# exactly (no recheck), costs about this many (measured at 100k keys, migration
# 0010: 5,000 matches of q=ml, ~0.53 us each vs ~0.19 us an entry walked).
EXACT_FETCH_TO_WALK = 3
# Testing one row of api_key_search in a sequential scan costs about this many
# (measured at 100k keys: ~0.15 us a row, strpos included).
SCAN_TO_WALK = 1
# The count of a trigram-served term keeps the page too when the keys holding
# its rarest three-character gram are at most this share of all keys (1/10).
COUNT_KEEPS_PAGE_SHARE = 10
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


def trigram_served(q: str) -> bool:
    """Whether the trigram index narrows ``'%q%'`` down: *q* is longer than
    ``SHORT_GRAM_MAX`` and holds two ASCII letters or digits in a row (so pg_trgm
    takes a trigram of two word characters from it, in any locale). ``'50%'``
    and ``'-ab-'`` are; ``'%%%'``, ``'a-b'``, ``'%a_b'`` and a run of backslashes
    are not."""
    return len(q) > SHORT_GRAM_MAX and _WORD_PAIR.search(q) is not None


def _scan_is_cheaper(candidates: Any, keys: Any) -> Any:
    """Testing every key of ``api_key_search`` costs less than fetching
    *candidates* through an index (in Python or in SQL)."""
    return candidates * FETCH_TO_WALK > keys * SCAN_TO_WALK


def plan(matches: int, keys: int, limit: int, fetch: int | None = None) -> int | None:
    """How to find a page of *limit* among *matches* of *keys* (all > 0): ``0`` to
    fetch every match, ``None`` to walk until the page is full, ``n`` to walk at
    most *n* index entries and fetch when they hold less than a page.

    A walk passes ``limit * keys / matches`` entries when the matches spread
    evenly, and every non-match before the page when they cluster; a fetch
    costs *fetch* such entries (:meth:`Tally.fetch_cost`; by default
    ``matches * FETCH_TO_WALK``, the cost of fetching each match through an
    index). So: fetch when even a lucky walk costs more; otherwise walk, but no
    further than twice the even spread or half the cost of the fetch, whichever
    is more, and fetch after that. The worst case is then about one and a half
    fetches, however the matches lie.
    """
    even = math.ceil(limit * keys / matches)
    if fetch is None:
        fetch = matches * FETCH_TO_WALK
    if even > fetch:
        return 0
    budget = max(2 * even, fetch // 2)
    return None if budget >= keys else budget


@dataclass(frozen=True, slots=True)
class _Bound:
    """The conditions of a search as bind parameters (a statement built once per
    shape of search, run with each search's values)."""

    status: Any = None
    usage_limit: Any = None
    provider_ids: Any = None
    model_ids: Any = None


def _filters(table: Any, c: KeyConditions | _Bound) -> list[ColumnElement[bool]]:
    """The conditions other than ``q``, on ``api_keys``, ``api_key_counts`` or
    ``api_key_search`` (the same column names)."""
    where: list[ColumnElement[bool]] = []
    status, usage_limit = c.status, c.usage_limit
    if isinstance(c, KeyConditions):  # an empty value is no condition
        status, usage_limit = status or None, usage_limit or None
    if status is not None:
        where.append(table.status == status)
    if usage_limit is not None:
        where.append(table.usage_limit == usage_limit)
    if c.provider_ids is not None:
        where.append(table.provider_id.in_(c.provider_ids))
    if c.model_ids is not None:
        where.append(table.model_id.in_(c.model_ids))
    return where


def _like_lowered(term: ColumnElement[str]) -> ColumnElement[str]:
    """``'%' || term || '%'`` with ``\\``, ``%`` and ``_`` escaped, in SQL."""
    escaped = func.replace(func.replace(func.replace(term, "\\", "\\\\"), "%", "\\%"), "_", "\\_")
    return literal("%") + escaped + literal("%")


async def tally(
    session: AsyncSession | AsyncConnection, c: KeyConditions, want: PageRequest | None = None
) -> Tally:
    """The exact total of *c*, every key, and ``q`` as PostgreSQL lower-cases it:
    one statement (:func:`tally_statement`).

    For a term the trigram index counts, given the page *want*, the same
    statement finds that page among the matches it counts (:func:`_counted_page`)
    when they are few (``COUNT_KEEPS_PAGE_SHARE``): the count reads every match
    from ``api_key_search`` anyway, and keeping the first few in sort order
    costs little beside it, where a walk or a fetch after the count costs a
    second pass (5,000 matches of ``q=payments`` at 100k keys: ~3 ms to count,
    ~4 ms to fetch again, and up to twice that for a walk that falls short
    first when the matches cluster in the sort order, as for ``sort=alias``)."""
    shape, params = _shape(c)
    if want is not None and shape[0] == "long":
        return await _counted_page(session, shape, params, want)
    row = (await session.execute(_tally_statement(*shape), params)).one()
    term, matches, keys, gram, candidates = row
    if gram is None:
        return Tally(term=term, matches=int(matches), keys=int(keys), candidates=int(matches))
    return Tally(term, int(matches), int(keys), gram=gram, candidates=int(candidates))


async def _counted_page(
    session: AsyncSession | AsyncConnection,
    shape: _Shape,
    params: dict[str, Any],
    want: PageRequest,
) -> Tally:
    """:func:`tally` for a trigram-served term, with the page *want*."""
    field = want.sort.lstrip("-")
    after = want.after is not None
    stmt = _counted_page_statement(shape, field, want.sort.startswith("-"), after)
    values = {**params, "page_limit": want.limit, "keep_share": COUNT_KEEPS_PAGE_SHARE}
    if want.after is not None:
        for i, value in enumerate(want.after[: len(sort_keys(SEARCH, field))]):
            values[f"after{i}"] = value
    term, matches, keys, first = (await session.execute(stmt, values)).one()
    if first is None:  # too many matches to keep: walk or fetch (plan)
        return Tally(term=term, matches=int(matches), keys=int(keys), candidates=int(matches))
    return Tally(
        term=term,
        matches=int(matches),
        keys=int(keys),
        candidates=int(matches),
        first=tuple(first),
        first_for=want,
    )


@functools.cache
def _counted_page_statement(shape: _Shape, field: str, descending: bool, after: bool) -> Any:
    """``(term, matches, keys, first page's ids)`` for one shape of search whose
    term the trigram index serves: the matches (their ids and sort keys) found
    once, then counted and the first ``page_limit`` after the cursor kept."""
    _, status, usage_limit, providers, models = shape
    c = _Bound(
        status=bindparam("status") if status else None,
        usage_limit=bindparam("usage_limit") if usage_limit else None,
        provider_ids=bindparam("provider_ids", expanding=True) if providers else None,
        model_ids=bindparam("model_ids", expanding=True) if models else None,
    )
    counts = api_key_counts.c
    everything = (
        select(func.coalesce(func.sum(counts.n), 0)).where(counts.gram == "").scalar_subquery()
    )
    term = func.lower(bindparam("q", type_=Text))
    pattern = select(_like_lowered(term)).scalar_subquery()  # once, not per candidate
    keys = sort_keys(SEARCH, field)
    matched = (
        select(SEARCH.id, *(k.label(f"k{i}") for i, k in enumerate(keys)))
        .where(SEARCH.alias_lower.like(pattern), *_filters(SEARCH, c))
        .cte("matched")
        .prefix_with("MATERIALIZED")  # read once, for the count and the page
    )
    position = [matched.c[f"k{i}"] for i in range(len(keys))]
    where: list[ColumnElement[bool]] = []
    if after:
        cursor = tuple_(*(bindparam(f"after{i}", type_=k.type) for i, k in enumerate(keys)))
        where.append(tuple_(*position) < cursor if descending else tuple_(*position) > cursor)
    order = [k.desc() if descending else k.asc() for k in position]
    first = (
        select(matched.c.id)
        .where(*where)
        .order_by(*order)
        .limit(bindparam("page_limit"))
        .subquery("first")
    )
    ids = func.array_agg(first.c.id)  # in any order: page() reads the rows in order
    # Only when the matches are few: keeping them all for the page costs ~0.2 us
    # a match more than counting them (~50% more for 25k matches of 100k keys),
    # where a walk to a page of matches that common passes a few hundred entries.
    # Their rarest three-character gram bounds them from above.
    bound = select(_rarest_gram(term, COUNTED_GRAM_MAX).c.n).scalar_subquery()
    few = bound * bindparam("keep_share", type_=BigInteger) <= everything
    matches = case(
        (few, select(func.count()).select_from(matched).scalar_subquery()),
        else_=_trigram_count(term, c),
    )
    return select(
        term,
        cast(matches, BigInteger),
        cast(everything, BigInteger),
        # No match after the cursor: an empty page, not NULL (which says "not kept").
        case(
            (few, func.coalesce(select(ids).scalar_subquery(), literal([], ARRAY(SEARCH.id.type)))),
            else_=None,
        ),
    )


def tally_statement(c: KeyConditions) -> Any:
    """The statement :func:`tally` runs for *c*, its values bound: ``(term,
    matches, keys, gram, candidates)`` (see :class:`Tally`)."""
    shape, params = _shape(c)
    return _tally_statement(*shape).params(params)


_Shape = tuple[str | None, bool, bool, bool, bool]


def _shape(c: KeyConditions) -> tuple[_Shape, dict[str, Any]]:
    """What the tally's statement for *c* depends on (the kind of term, which
    filters there are), and the values it runs with."""
    kind = None
    if c.q is not None:
        kind = "short" if len(c.q) <= COUNTED_GRAM_MAX else "long"
        kind += "" if trigram_served(c.q) else ", no trigram"
    values = {
        "q": c.q,
        "status": c.status or None,  # an empty value is no condition
        "usage_limit": c.usage_limit or None,
        "provider_ids": c.provider_ids,
        "model_ids": c.model_ids,
    }
    params = {name: value for name, value in values.items() if value is not None}
    shape = (kind, "status" in params, "usage_limit" in params)
    return (*shape, "provider_ids" in params, "model_ids" in params), params


@functools.cache
def _tally_statement(
    term_kind: str | None, status: bool, usage_limit: bool, providers: bool, models: bool
) -> Any:
    """The tally's statement for one shape of search (built once: a statement this
    size takes ~0.3-0.8 ms of Python to build, more than PostgreSQL takes to
    run it when it matches nothing). It picks the counter, the trigram index or
    the gram index by the term (the one the page goes on to use)."""
    counts = api_key_counts.c
    c = _Bound(
        status=bindparam("status") if status else None,
        usage_limit=bindparam("usage_limit") if usage_limit else None,
        provider_ids=bindparam("provider_ids", expanding=True) if providers else None,
        model_ids=bindparam("model_ids", expanding=True) if models else None,
    )

    def counted(gram: ColumnElement[str], *where: ColumnElement[bool]) -> Any:
        total = func.coalesce(func.sum(counts.n), 0)
        return select(total).where(counts.gram == gram, *where).scalar_subquery()

    everything = counted(literal(""))
    term: ColumnElement[Any] = literal(None, Text)
    gram: ColumnElement[Any] = literal(None, Text)
    candidates: ColumnElement[Any] = literal(None, BigInteger)
    if term_kind is None:
        matches = counted(literal(""), *_filters(counts, c))
    else:
        term = func.lower(bindparam("q", type_=Text))
        if "no trigram" not in term_kind:
            scanned = _trigram_count(term, c)
        else:
            rarest = _rarest_gram(term)
            gram = select(rarest.c.gram).scalar_subquery()
            candidates = select(rarest.c.n).scalar_subquery()
            scanned = case(
                (_scan_is_cheaper(candidates, everything), _scan_count(term, None, c)),
                else_=_scan_count(term, gram, c),
            )
        # Lower-casing never shortens a term (libc folds character for character;
        # ICU may lengthen one), so only a short q needs the database to choose.
        if term_kind.startswith("short"):
            short = func.length(term) <= COUNTED_GRAM_MAX
            matches = case((short, counted(term, *_filters(counts, c))), else_=scanned)
            gram = case((short, None), else_=gram)
            candidates = case((short, None), else_=candidates)
        else:
            matches = scanned
    return select(term, cast(matches, BigInteger), cast(everything, BigInteger), gram, candidates)


def _trigram_count(term: ColumnElement[str], c: _Bound) -> Any:
    """The matches of *term* and *c*, counted through the trigram index."""
    # The pattern as a subquery: evaluated once (an InitPlan), not again for
    # every candidate the trigram index gives (~0.3 us each). No ESCAPE
    # clause: it would wrap the pattern in like_escape() per candidate, and
    # the backslash _like_lowered escapes with is LIKE's default escape.
    pattern = select(_like_lowered(term)).scalar_subquery()
    return (
        select(func.count())
        .select_from(api_key_search)
        .where(SEARCH.alias_lower.like(pattern), *_filters(SEARCH, c))
        .scalar_subquery()
    )


def _rarest_gram(term: ColumnElement[str], width: int = SHORT_GRAM_MAX) -> Any:
    """The gram of *width* characters of *term* the fewest keys hold
    (``api_key_counts`` knows how many: its rows for the gram, summed), and that
    number: a term holds every one of its grams, so only these keys can match."""
    counts = api_key_counts.c
    # substr() inline, not aigw_alias_short_grams(): a SQL function with an
    # aggregate is planned again at each execution (~0.14 ms). The term as a
    # subquery: a plan knowing it would count its grams, cost less than the
    # generic one, and be planned again at each execution (~0.4 ms).
    term = select(term).scalar_subquery()
    last = func.length(term) - (width - 1)
    at = func.generate_series(1, last).table_valued("i").render_derived("at")
    grams = select(func.substr(term, at.c.i, width).label("gram")).distinct().subquery("grams")
    holding = (
        select(func.coalesce(func.sum(counts.n), 0))
        .where(counts.gram == grams.c.gram)
        .scalar_subquery()
        .label("n")
    )
    rarest = select(grams.c.gram, holding).order_by(holding, grams.c.gram).limit(1)
    return rarest.cte("rarest" if width == SHORT_GRAM_MAX else f"rarest{width}")


def _holding(gram: Any) -> ColumnElement[bool]:
    """``api_key_search``'s alias has the one- or two-character *gram* (the
    indexed expression of migration 0009, called the same way)."""
    grams = func.aigw_alias_short_grams(SEARCH.alias_lower, type_=ARRAY(Text))
    return grams.contains(array([cast(gram, Text)]))


def _holding_three(term: Any) -> ColumnElement[bool]:
    """``api_key_search``'s alias has the three-character *term* (the indexed
    expression of migration 0010, called the same way): exactly the keys
    ``'%term%'`` matches."""
    grams = func.aigw_alias_three_grams(SEARCH.alias_lower, type_=ARRAY(Text))
    return grams.contains(array([cast(term, Text)]))


def _scan_count(term: ColumnElement[str], gram: Any, c: _Bound) -> Any:
    """The matches of *term* and *c*, each tested on its narrow row: among the
    keys holding its *gram* (the gram index gives them), or among all keys (a
    sequential scan) when *gram* is ``None``."""
    needle = select(term).scalar_subquery()  # lower-cased once, not per row
    where = [func.strpos(SEARCH.alias_lower, needle) > 0, *_filters(SEARCH, c)]
    if gram is not None:
        where.append(_holding(gram))
    return select(func.count()).select_from(api_key_search).where(*where).scalar_subquery()


def _walk_conditions(
    entity: Any, c: KeyConditions | _Bound, term: Any
) -> list[ColumnElement[bool]]:
    """Every condition, on columns the sort indexes hold (tested on the entry)."""
    where = _filters(entity, c)
    if term is not None:
        where.append(func.strpos(entity.alias_lower, term) > 0)
    return where


def _fetch_source(found: Tally) -> Any:
    """Where a fetch finds its matches: ``api_key_search`` for a term (its term
    indexes), ``api_keys`` for filters alone (its provider, model and status
    indexes)."""
    return ApiKey if found.term is None else SEARCH


def _fetch_kind(found: Tally) -> str:
    """How a fetch finds the matches of *found* (:func:`_fetch_where`)."""
    term = found.term
    if term is None:
        return "keys"
    if len(term) <= SHORT_GRAM_MAX:
        return "short"
    if len(term) == COUNTED_GRAM_MAX:
        return "three"
    if found.gram is not None:
        return "scan" if found.scans else "gram"
    return "trigram"


def _fetch_conditions(c: KeyConditions, found: Tally) -> list[ColumnElement[bool]]:
    """Every condition on :func:`_fetch_source`, in the shapes its indexes serve."""
    kind = _fetch_kind(found)
    pattern = like_pattern(found.term) if kind == "trigram" and found.term else None
    return _fetch_where(c, kind, found.term, found.gram, pattern)


def _fetch_where(
    c: KeyConditions | _Bound, kind: str, term: Any, gram: Any, pattern: Any
) -> list[ColumnElement[bool]]:
    """:func:`_fetch_conditions` of a fetch *kind*, with its values (or bind
    parameters for them)."""
    if kind == "keys":
        return _filters(ApiKey, c)
    where = _filters(SEARCH, c)
    if kind == "short":
        # A term this short is a substring exactly when it is one of the grams.
        where.append(_holding(term))
    elif kind == "three":
        where.append(_holding_three(term))
    elif kind in ("scan", "gram"):
        # No trigram to narrow it down: every key tested, or those holding its
        # rarest gram.
        where.append(func.strpos(SEARCH.alias_lower, term) > 0)
        if kind == "gram":
            where.append(_holding(gram))
    else:
        where.append(SEARCH.alias_lower.like(pattern, escape="\\"))
    return where


async def page(
    session: AsyncSession | AsyncConnection,
    c: KeyConditions,
    found: Tally,
    *,
    sort: str,
    after: tuple[object, ...] | None,
    limit: int,
) -> list[Any]:
    """Up to *limit* keys (rows of :data:`PAGE_COLUMNS`) in *sort* order after the cursor.

    The statement is built once per shape of page (:func:`_page_statement`) and
    run with this one's values: building it took ~1 ms of Python a request."""
    if found.matches == 0:
        return []
    values: dict[str, Any] = {"page_limit": limit}
    if after is not None:
        values.update(
            (f"after{i}", v)
            for i, v in enumerate(after[: len(sort_keys(ApiKey, sort.lstrip("-")))])
        )
    if found.first is not None and found.first_for == PageRequest(sort, after, limit):
        if not found.first:
            return []
        stmt = _page_statement(sort, False, "kept", None, False, (False,) * 4)
        return list((await session.execute(stmt, {"ids": list(found.first)})).all())
    how = plan(found.matches, max(found.keys, found.matches), limit, found.fetch_cost())
    path = "walk" if how is None else "fetch" if how == 0 else "window"
    kind = None if how is None else _fetch_kind(found)
    _, params = _shape(c)
    values.update((k, v) for k, v in params.items() if k != "q")
    filters = tuple(k in params for k in ("status", "usage_limit", "provider_ids", "model_ids"))
    if found.term is not None:
        values["term"] = found.term
    if kind == "gram":
        values["gram"] = found.gram
    if kind == "trigram" and found.term is not None:
        values["pattern"] = like_pattern(found.term)
    if how:
        values["how"] = how
    stmt = _page_statement(sort, after is not None, path, kind, found.term is not None, filters)
    return list((await session.execute(stmt, values)).all())


@functools.cache
def _page_statement(
    sort: str,
    after: bool,
    path: str,
    kind: str | None,
    has_term: bool,
    filters: tuple[bool, ...],
) -> Any:
    """The page's statement for one shape: *path* ``"kept"`` (the ids given),
    ``"walk"`` (along the sort order until the page is full), ``"fetch"`` (every
    match, then sorted) or ``"window"`` (a walk of the first ``how`` entries,
    else the fetch); *kind* how the fetch finds the matches (:func:`_fetch_kind`)."""
    descending = sort.startswith("-")
    field = sort.lstrip("-")
    keys = sort_keys(ApiKey, field)
    cursor = [bindparam(f"after{i}", type_=k.type) for i, k in enumerate(keys)]
    page_limit: Any = bindparam("page_limit")
    status, usage_limit, providers, models = filters
    c = _Bound(
        status=bindparam("status") if status else None,
        usage_limit=bindparam("usage_limit") if usage_limit else None,
        provider_ids=bindparam("provider_ids", expanding=True) if providers else None,
        model_ids=bindparam("model_ids", expanding=True) if models else None,
    )
    term = bindparam("term", type_=Text) if has_term else None

    def ordered(columns: tuple[Any, ...]) -> list[Any]:
        return [col.desc() if descending else col.asc() for col in columns]

    def after_where(columns: tuple[Any, ...]) -> list[ColumnElement[bool]]:
        if not after:
            return []
        position, bound = tuple_(*columns), tuple_(*cursor[: len(columns)])
        return [position < bound if descending else position > bound]

    def rows(ids: Any) -> Any:
        return (
            select(*PAGE_COLUMNS)
            .join(Provider, Provider.id == ApiKey.provider_id)
            .join(ProviderModel, ProviderModel.id == ApiKey.model_id)
            .where(ApiKey.id.in_(ids))
            .order_by(*ordered(keys))
        )

    if path == "kept":
        return rows(bindparam("ids", expanding=True))
    if path == "walk":
        where = _walk_conditions(ApiKey, c, term)
        walk = select(ApiKey.id).where(*after_where(keys), *where)
        return rows(walk.order_by(*ordered(keys)).limit(page_limit))
    # With a term, the matches come from api_key_search (its term indexes, its
    # narrow rows), with the sort keys it holds, equal to the key's own (the same
    # transaction wrote them).
    assert kind is not None
    source = ApiKey if kind == "keys" else SEARCH
    search_keys = sort_keys(source, field)
    gram = bindparam("gram", type_=Text) if kind == "gram" else None
    pattern = bindparam("pattern", type_=Text) if kind == "trigram" else None
    where = [*_fetch_where(c, kind, term, gram, pattern), *after_where(search_keys)]
    fetched: Any
    if source is SEARCH:
        # api_key_search has no index in any sort order: the matches can only be
        # found through its term index, then sorted (no fence needed; one costs
        # ~1.3 ms for 5,000 matches).
        fetched = select(SEARCH.id).where(*where).order_by(*ordered(search_keys)).limit(page_limit)
    else:
        labels = [k.label(f"k{i}") for i, k in enumerate(search_keys)]
        matched = (
            select(source.id, *labels)
            .where(*where)
            .cte("matched")
            .prefix_with("MATERIALIZED")  # a fence: find the matches first, then sort
        )
        fetched = (
            select(matched.c.id)
            .order_by(*ordered(tuple(matched.c[f"k{i}"] for i in range(len(keys)))))
            .limit(page_limit)
        )
    if path == "fetch":
        return rows(fetched)
    # The first `how` entries after the cursor (an index-only scan: every column
    # selected is in the sort index), then the conditions on them.
    window = (
        select(*_window_columns(keys))
        .where(*after_where(keys))
        .order_by(*ordered(keys))
        .limit(bindparam("how"))
        .subquery("window")
    )
    window_keys = sort_keys(window.c, field)
    walked = (
        select(window.c.id)
        .where(*_walk_conditions(window.c, c, term))
        .order_by(*ordered(window_keys))
        .limit(page_limit)
        .cte("walked")
        .prefix_with("MATERIALIZED")
    )
    # Any match among those entries precedes every match after them: a full page
    # found there is the page; else the fetch's (one statement: PostgreSQL runs
    # only the branch the walk's count selects).
    full = select(func.count()).select_from(walked).scalar_subquery() == page_limit
    fetched_ids = fetched.subquery("fetched")
    either = union_all(
        select(walked.c.id).where(full),
        select(fetched_ids.c.id).where(~full),
    )
    return rows(either)


def _window_columns(keys: tuple[Any, ...]) -> list[Any]:
    """The sort keys and every column a condition tests: all in the sort's index."""
    columns = [*keys, ApiKey.id, ApiKey.alias_lower, *(getattr(ApiKey, f) for f in SEARCH_FILTERS)]
    return list({col.key: col for col in columns}.values())

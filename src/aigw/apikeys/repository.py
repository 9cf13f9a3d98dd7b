"""Composable queries over AI API keys; no commits here."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, delete, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import aliased

from aigw.apikeys.models import ApiKey, IdempotencyRecord
from aigw.db.filters import contains_ci
from aigw.db.repository import Repository


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


SORT_FIELDS = ("alias", "created_at", "updated_at")


def sort_keys(entity: Any, field: str) -> tuple[Any, ...]:
    """The ORDER BY of *field*: lower(alias) is unique, so it orders alone (and its
    unique index serves the keyset); timestamps tie, so the id breaks ties, as in
    their indexes."""
    if field == "alias":
        return (func.lower(entity.alias),)
    return (getattr(entity, field), entity.id)


# pg_trgm serves a substring of three characters or more; a shorter one has no
# trigram, and its GIN index would be read whole. Migration 0006 indexes the
# distinct one- and two-character substrings of lower(alias) instead: a term of
# that length is a substring exactly when it is one of them.
SHORT_GRAM_MAX = 2
# With q, a page walks the sort index only when at least 1 in DENSE_SHARE keys
# match (see ApiKeyRepository.page); testing LIKE on a row costs a few times
# less than fetching and sorting a match, so the walk's worst case (every
# non-match passed) stays below the fetch's at this share.
DENSE_SHARE = 4
# The most rows the bounded walk tests before the matches are fetched instead.
PROBE_ROWS = 4_000


def alias_contains(term: str) -> ColumnElement[bool]:
    """``lower(alias)`` holds *term* literally; the same rows whichever index serves it."""
    lowered = term.lower()
    if len(lowered) <= SHORT_GRAM_MAX:
        grams = func.aigw_alias_short_grams(func.lower(ApiKey.alias), type_=ARRAY(Text))
        return grams.contains([lowered])
    return contains_ci(ApiKey.alias, term)


class ApiKeyRepository(Repository[ApiKey]):
    """Provider and model come along with a key by the relationships' joined loading."""

    model = ApiKey
    not_found = "no AI API key with id {id}"

    @staticmethod
    def conditions(
        filters: KeyConditions, *, row_by_row: bool = False, entity: Any = ApiKey
    ) -> list[ColumnElement[bool]]:
        """The WHERE clauses of a search, on ``api_keys`` alone: provider and model
        come as ids, so neither the count nor the page has to join before it can use
        the sort index.

        ``q`` comes in the shape an index serves (the short-gram or trigram GIN
        index), or with *row_by_row* as the plain ``LIKE`` that is cheap to test on
        each row of a walk along the sort index. Both match the same rows.
        *entity* is ``ApiKey`` or an alias of it (a bounded window of rows).
        """
        where: list[ColumnElement[bool]] = []
        if filters.q:
            where.append(
                contains_ci(entity.alias, filters.q) if row_by_row else alias_contains(filters.q)
            )
        if filters.status:
            where.append(entity.status == filters.status)
        if filters.usage_limit:
            where.append(entity.usage_limit == filters.usage_limit)
        if filters.provider_ids is not None:
            where.append(entity.provider_id.in_(filters.provider_ids))
        if filters.model_ids is not None:
            where.append(entity.model_id.in_(filters.model_ids))
        return where

    async def alias_of(self, key_id: uuid.UUID) -> str | None:
        return await self.session.scalar(select(ApiKey.alias).where(ApiKey.id == key_id))

    async def count_of_provider(self, provider_id: uuid.UUID) -> int:
        stmt = select(func.count()).select_from(ApiKey).where(ApiKey.provider_id == provider_id)
        return int(await self.session.scalar(stmt) or 0)

    async def models_in_use(self, model_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        stmt = select(ApiKey.model_id).where(ApiKey.model_id.in_(model_ids)).distinct()
        return set((await self.session.execute(stmt)).scalars())

    async def count(self, filters: KeyConditions) -> int:
        """How many keys match, exactly, counted from the filters' indexes."""
        stmt = select(func.count()).select_from(ApiKey).where(*self.conditions(filters))
        return int(await self.session.scalar(stmt) or 0)

    async def estimated_rows(self) -> float:
        """The planner's row count of ``api_keys`` (kept by ANALYZE/autovacuum)."""
        stmt = select(text("reltuples FROM pg_class WHERE oid = 'api_keys'::regclass"))
        return float(await self.session.scalar(stmt) or 0.0)

    async def page(
        self,
        filters: KeyConditions,
        *,
        matches: int,
        sort: str,
        after: tuple[object, uuid.UUID] | None,
        limit: int,
    ) -> list[ApiKey]:
        """Up to *limit* keys in *sort* order after the cursor; *matches* is the count.

        With ``q``, the planner's guess at how the matches spread along the sort
        order decides between walking the sort index and fetching the matches
        first, and it guesses as if they were spread evenly. They seldom are
        (``q=ml`` finds every ``ml-…`` alias in one stretch of ``sort=alias``),
        and a wrong guess walks most of the table. So the exact count decides:

        - dense (at least 1 in DENSE_SHARE keys): walk the sort index testing
          each row; it stops after a page, and however the matches cluster it
          cannot pass more rows than do not match;
        - otherwise, when twice the rows a page takes if the matches spread
          evenly is at most PROBE_ROWS, first a walk over just that many rows
          after the cursor (any match among them precedes every match after
          them, so a full page found there is the right page); when it falls
          short, or the matches are too few to try, the filters' indexes fetch
          every match (then at most about 2 * limit * rows / PROBE_ROWS of
          them), which are then sorted.
        """
        if matches == 0:
            return []
        descending = sort.startswith("-")
        field = sort.lstrip("-")

        def ordered(*columns: Any) -> list[Any]:
            return [c.desc() if descending else c.asc() for c in columns]

        def after_where(entity: Any) -> list[ColumnElement[bool]]:
            if after is None:
                return []
            keys = sort_keys(entity, field)
            position, bound = tuple_(*keys), tuple_(*after[: len(keys)])
            return [position < bound if descending else position > bound]

        keys = sort_keys(ApiKey, field)
        rows = await self.estimated_rows()
        if not filters.q or matches * DENSE_SHARE >= rows:
            where = self.conditions(filters, row_by_row=True)
            return await self._rows(
                select(ApiKey).where(*where, *after_where(ApiKey)), ordered(*keys), limit
            )
        # Twice the rows a page takes if the matches spread evenly.
        span = math.ceil(2 * limit * rows / matches)
        if matches >= limit and span <= PROBE_ROWS:
            window = aliased(
                ApiKey,
                select(ApiKey)
                .where(*after_where(ApiKey))
                .order_by(*ordered(*keys))
                .limit(span)
                .subquery("window"),
            )
            where = self.conditions(filters, row_by_row=True, entity=window)
            probe = await self._rows(
                select(window).where(*where), ordered(*sort_keys(window, field)), limit
            )
            if len(probe) == limit:
                return probe
        labels = [k.label(f"k{i}") for i, k in enumerate(keys)]
        matched = (
            select(ApiKey.id, *labels)
            .where(*self.conditions(filters), *after_where(ApiKey))
            .cte("matched")
            .prefix_with("MATERIALIZED")  # a fence: filter first, then sort
        )
        first = (
            select(matched.c.id)
            .order_by(*ordered(*(matched.c[f"k{i}"] for i in range(len(keys)))))
            .limit(limit)
        )
        return await self._rows(select(ApiKey).where(ApiKey.id.in_(first)), ordered(*keys), limit)

    async def _rows(self, stmt: Select[Any], order: list[Any], limit: int) -> list[ApiKey]:
        stmt = stmt.order_by(*order).limit(limit)
        return list((await self.session.execute(stmt)).unique().scalars())

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        return await self.session.get(IdempotencyRecord, key)

    async def purge_idempotency(self, older_than: timedelta) -> None:
        cutoff = datetime.now().astimezone() - older_than
        await self.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
        )

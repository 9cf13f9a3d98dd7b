"""Composable queries over AI API keys; no commits here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, tuple_

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


SORT_COLUMNS: dict[str, Any] = {
    "alias": func.lower(ApiKey.alias),
    "created_at": ApiKey.created_at,
    "updated_at": ApiKey.updated_at,
}


class ApiKeyRepository(Repository[ApiKey]):
    """Provider and model come along with a key by the relationships' joined loading."""

    model = ApiKey
    not_found = "no AI API key with id {id}"

    @staticmethod
    def conditions(filters: KeyConditions) -> list[ColumnElement[bool]]:
        """The WHERE clauses of a search, on ``api_keys`` alone: provider and model
        come as ids, so neither the count nor the page has to join before it can use
        the sort index."""
        where: list[ColumnElement[bool]] = []
        if filters.q:
            where.append(contains_ci(ApiKey.alias, filters.q))
        if filters.status:
            where.append(ApiKey.status == filters.status)
        if filters.usage_limit:
            where.append(ApiKey.usage_limit == filters.usage_limit)
        if filters.provider_ids is not None:
            where.append(ApiKey.provider_id.in_(filters.provider_ids))
        if filters.model_ids is not None:
            where.append(ApiKey.model_id.in_(filters.model_ids))
        return where

    async def alias_of(self, key_id: uuid.UUID) -> str | None:
        return await self.session.scalar(select(ApiKey.alias).where(ApiKey.id == key_id))

    async def count_of_provider(self, provider_id: uuid.UUID) -> int:
        stmt = select(func.count()).select_from(ApiKey).where(ApiKey.provider_id == provider_id)
        return int(await self.session.scalar(stmt) or 0)

    async def models_in_use(self, model_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        stmt = select(ApiKey.model_id).where(ApiKey.model_id.in_(model_ids)).distinct()
        return set((await self.session.execute(stmt)).scalars())

    async def count(self, where: list[ColumnElement[bool]]) -> int:
        stmt = select(func.count()).select_from(ApiKey).where(*where)
        return int(await self.session.scalar(stmt) or 0)

    async def page(
        self,
        where: list[ColumnElement[bool]],
        *,
        sort: str,
        after: tuple[object, uuid.UUID] | None,
        limit: int,
    ) -> list[ApiKey]:
        descending = sort.startswith("-")
        field = sort.lstrip("-")
        column = SORT_COLUMNS[field]
        stmt = select(ApiKey).where(*where)
        # lower(alias) is unique, so it orders alone (and its unique index serves
        # the keyset); timestamps tie, so the id breaks ties, as in their indexes.
        keys: tuple[Any, ...] = (column,) if field == "alias" else (column, ApiKey.id)
        if after is not None:
            position = tuple_(*keys)
            bound = tuple_(*after[: len(keys)])
            stmt = stmt.where(position < bound if descending else position > bound)
        stmt = stmt.order_by(*(k.desc() if descending else k.asc() for k in keys)).limit(limit)
        return list((await self.session.execute(stmt)).unique().scalars())

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        return await self.session.get(IdempotencyRecord, key)

    async def purge_idempotency(self, older_than: timedelta) -> None:
        cutoff = datetime.now().astimezone() - older_than
        await self.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
        )

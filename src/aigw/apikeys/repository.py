"""Composable queries over AI API keys; no commits here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.apikeys.models import ApiKey, IdempotencyRecord
from aigw.providers.models import Provider, ProviderModel
from aigw.providers.repository import like_pattern


@dataclass(frozen=True, slots=True)
class KeyFilters:
    q: str | None = None
    status: str | None = None
    provider: str | None = None
    model: str | None = None
    usage_limit: str | None = None


SORT_COLUMNS: dict[str, Any] = {
    "alias": func.lower(ApiKey.alias),
    "created_at": ApiKey.created_at,
    "updated_at": ApiKey.updated_at,
}


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key_id: uuid.UUID, *, for_update: bool = False) -> ApiKey | None:
        # Provider and model come along by the relationships' joined loading.
        stmt = select(ApiKey).where(ApiKey.id == key_id).execution_options(populate_existing=True)
        if for_update:
            stmt = stmt.with_for_update(of=ApiKey)
        key: ApiKey | None = (await self.session.execute(stmt)).unique().scalar_one_or_none()
        return key

    @staticmethod
    def conditions(filters: KeyFilters) -> list[ColumnElement[bool]]:
        """The WHERE clauses of a search, on ``api_keys`` alone: provider and model
        filters are sub-selects of their small tables, so neither the count nor the
        page has to join before it can use the sort index."""
        where: list[ColumnElement[bool]] = []
        if filters.q:
            where.append(
                func.lower(ApiKey.alias).like(like_pattern(filters.q.lower()), escape="\\")
            )
        if filters.status:
            where.append(ApiKey.status == filters.status)
        if filters.usage_limit:
            where.append(ApiKey.usage_limit == filters.usage_limit)
        if filters.provider:
            where.append(
                ApiKey.provider_id.in_(
                    select(Provider.id).where(func.lower(Provider.name) == filters.provider.lower())
                )
            )
        if filters.model:
            where.append(
                ApiKey.model_id.in_(
                    select(ProviderModel.id).where(ProviderModel.name == filters.model)
                )
            )
        return where

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

"""Composable queries over AI API keys; no commits here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import contains_eager

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

    @staticmethod
    def _base() -> Select[Any]:
        return (
            select(ApiKey)
            .join(ApiKey.provider)
            .join(ApiKey.model)
            .options(contains_eager(ApiKey.provider), contains_eager(ApiKey.model))
        )

    async def get(self, key_id: uuid.UUID, *, for_update: bool = False) -> ApiKey | None:
        stmt = self._base().where(ApiKey.id == key_id).execution_options(populate_existing=True)
        if for_update:
            stmt = stmt.with_for_update(of=ApiKey)
        key: ApiKey | None = (await self.session.execute(stmt)).unique().scalar_one_or_none()
        return key

    def search(self, filters: KeyFilters) -> Select[Any]:
        stmt = self._base()
        if filters.q:
            stmt = stmt.where(
                func.lower(ApiKey.alias).like(like_pattern(filters.q.lower()), escape="\\")
            )
        if filters.status:
            stmt = stmt.where(ApiKey.status == filters.status)
        if filters.usage_limit:
            stmt = stmt.where(ApiKey.usage_limit == filters.usage_limit)
        if filters.provider:
            stmt = stmt.where(func.lower(Provider.name) == filters.provider.lower())
        if filters.model:
            stmt = stmt.where(ProviderModel.name == filters.model)
        return stmt

    async def count(self, stmt: Select[Any]) -> int:
        counted = stmt.with_only_columns(func.count(ApiKey.id)).order_by(None)
        return int(await self.session.scalar(counted) or 0)

    async def page(
        self,
        stmt: Select[Any],
        *,
        sort: str,
        after: tuple[object, uuid.UUID] | None,
        limit: int,
    ) -> list[ApiKey]:
        descending = sort.startswith("-")
        column = SORT_COLUMNS[sort.lstrip("-")]
        if after is not None:
            position = tuple_(column, ApiKey.id)
            stmt = stmt.where(position < after if descending else position > after)
        order = (column.desc(), ApiKey.id.desc()) if descending else (column.asc(), ApiKey.id.asc())
        stmt = stmt.order_by(*order).limit(limit)
        return list((await self.session.execute(stmt)).unique().scalars())

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        return await self.session.get(IdempotencyRecord, key)

    async def purge_idempotency(self, older_than: timedelta) -> None:
        cutoff = datetime.now().astimezone() - older_than
        await self.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
        )

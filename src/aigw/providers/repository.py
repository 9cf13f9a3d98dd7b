"""Composable queries over providers; no commits here."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.apikeys.models import ApiKey
from aigw.providers.models import Provider, ProviderModel


def like_pattern(term: str) -> str:
    """A LIKE pattern matching *term* literally as a substring (``%``/``_`` escaped)."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ProviderRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, provider_id: uuid.UUID, *, for_update: bool = False) -> Provider | None:
        stmt = (
            select(Provider)
            .where(Provider.id == provider_id)
            .execution_options(populate_existing=True)
        )
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def get_by_name(self, name: str) -> Provider | None:
        stmt = select(Provider).where(func.lower(Provider.name) == name.lower())
        return (await self.session.execute(stmt)).scalar_one_or_none()

    def search(self, q: str | None, kind: str | None) -> Select[Any]:
        stmt = select(Provider)
        if q:
            stmt = stmt.where(func.lower(Provider.name).like(like_pattern(q.lower()), escape="\\"))
        if kind:
            stmt = stmt.where(Provider.kind == kind)
        return stmt

    async def count(self, stmt: Select[Any]) -> int:
        total = await self.session.scalar(select(func.count()).select_from(stmt.subquery()))
        return int(total or 0)

    async def page(self, stmt: Select[Any], after_name: str | None, limit: int) -> list[Provider]:
        if after_name is not None:
            stmt = stmt.where(func.lower(Provider.name) > after_name)
        stmt = stmt.order_by(func.lower(Provider.name)).limit(limit)
        return list((await self.session.execute(stmt)).scalars())

    async def models_in_use(self, provider_id: uuid.UUID) -> set[str]:
        stmt = (
            select(ProviderModel.name)
            .join(ApiKey, ApiKey.model_id == ProviderModel.id)
            .where(ProviderModel.provider_id == provider_id)
            .distinct()
        )
        return set((await self.session.execute(stmt)).scalars())

    async def key_count(self, provider_id: uuid.UUID) -> int:
        stmt = select(func.count()).select_from(ApiKey).where(ApiKey.provider_id == provider_id)
        return int(await self.session.scalar(stmt) or 0)

"""Composable queries over providers; no commits here."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select

from aigw.db.filters import contains_ci
from aigw.db.repository import Repository
from aigw.providers.models import Provider, ProviderModel


class ProviderRepository(Repository[Provider]):
    model = Provider
    not_found = "no provider with id {id}"

    async def get_by_name(self, name: str) -> Provider | None:
        stmt = select(Provider).where(func.lower(Provider.name) == name.lower())
        return (await self.session.execute(stmt)).scalar_one_or_none()

    def search(self, q: str | None, kind: str | None) -> Select[Any]:
        stmt = select(Provider)
        if q:
            stmt = stmt.where(contains_ci(Provider.name, q))
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

    async def model_ids_named(self, name: str) -> list[uuid.UUID]:
        """The ids of every provider's models called *name*."""
        stmt = select(ProviderModel.id).where(ProviderModel.name == name)
        return list((await self.session.execute(stmt)).scalars())

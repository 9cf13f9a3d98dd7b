"""Composable queries over AI API keys; no commits here (searching: aigw.apikeys.search)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from aigw.apikeys.models import ApiKey, IdempotencyRecord
from aigw.db.repository import Repository


class ApiKeyRepository(Repository[ApiKey]):
    """Provider and model come along with a key by the relationships' joined loading."""

    model = ApiKey
    not_found = "no AI API key with id {id}"

    async def alias_of(self, key_id: uuid.UUID) -> str | None:
        return await self.session.scalar(select(ApiKey.alias).where(ApiKey.id == key_id))

    async def count_of_provider(self, provider_id: uuid.UUID) -> int:
        stmt = select(func.count()).select_from(ApiKey).where(ApiKey.provider_id == provider_id)
        return int(await self.session.scalar(stmt) or 0)

    async def models_in_use(self, model_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        stmt = select(ApiKey.model_id).where(ApiKey.model_id.in_(model_ids)).distinct()
        return set((await self.session.execute(stmt)).scalars())

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        return await self.session.get(IdempotencyRecord, key)

    async def purge_idempotency(self, older_than: timedelta) -> None:
        cutoff = datetime.now().astimezone() - older_than
        await self.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
        )

"""Writes and reads the audit log. Snapshots passed in must already be secret-free."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.audit.models import AuditEntry
from aigw.context import current_request_id

ACTIONS = ("create", "update", "delete", "token_rotated", "secret_replaced")


def record(
    session: AsyncSession,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: uuid.UUID,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Add an audit row to the caller's transaction: it commits or rolls back with the change."""
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            before=before,
            after=after,
            request_id=current_request_id(),
        )
    )


async def search(
    session: AsyncSession,
    *,
    entity_type: str | None,
    entity_id: uuid.UUID | None,
    action: str | None,
    before_id: int | None,
    limit: int,
) -> list[AuditEntry]:
    stmt = select(AuditEntry)
    if entity_type:
        stmt = stmt.where(AuditEntry.entity_type == entity_type)
    if entity_id:
        stmt = stmt.where(AuditEntry.entity_id == entity_id)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    stmt = stmt.order_by(AuditEntry.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())

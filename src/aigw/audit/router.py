from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from aigw.audit import service
from aigw.deps import AdminDep, SessionDep
from aigw.pagination import decode_cursor, encode_cursor
from aigw.routing import AdminRoute

router = APIRouter(prefix="/audit", tags=["audit"], route_class=AdminRoute)


class AuditEntryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: uuid.UUID
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


class AuditPage(BaseModel):
    items: list[AuditEntryRead]
    next_cursor: str | None


@router.get("", response_model=AuditPage, summary="Who changed what, newest first")
async def list_audit_entries(
    session: SessionDep,
    _admin: AdminDep,
    entity_type: Annotated[Literal["provider", "api_key"] | None, Query()] = None,
    entity_id: Annotated[uuid.UUID | None, Query()] = None,
    action: Annotated[Literal[service.ACTIONS] | None, Query()] = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditPage:
    before_id = None
    if cursor:
        before_id = decode_cursor(cursor, {"before"})["before"]
        if not isinstance(before_id, int):
            before_id = None
    rows = await service.search(
        session,
        entity_type=entity_type,
        entity_id=entity_id,
        action=action,
        before_id=before_id,
        limit=limit + 1,
    )
    next_cursor = encode_cursor({"before": rows[limit - 1].id}) if len(rows) > limit else None
    return AuditPage(
        items=[AuditEntryRead.model_validate(row) for row in rows[:limit]], next_cursor=next_cursor
    )

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from aigw.deps import AdminDep, SessionDep
from aigw.routing import AdminRoute, problem_responses
from aigw.usage import service
from aigw.usage.schemas import KeyUsage

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_8601(value: object) -> object:
    """Only ISO 8601: pydantic's lax datetime would read ``0.0`` as the Unix epoch."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("expected an ISO 8601 date or date-time, like 2026-12-01")
    return value


IsoTime = Annotated[datetime | None, BeforeValidator(_iso_8601)]

router = APIRouter(prefix="/apikeys", tags=["usage"], route_class=AdminRoute)


@router.get(
    "/{key_id}/usage",
    response_model=KeyUsage,
    response_model_by_alias=True,
    summary="Token usage of one AI API key by outcome and endpoint: totals and per-day buckets",
    description="Over `[from, to)` (ISO 8601; naive times are UTC; default: the last 30 "
    "days; at most 366 days). Keeps working after the key is deleted.",
    responses=problem_responses(404, 422),
)
async def get_key_usage(
    key_id: uuid.UUID,
    session: SessionDep,
    _actor: AdminDep,
    start: Annotated[IsoTime, Query(alias="from")] = None,
    end: Annotated[IsoTime, Query(alias="to")] = None,
) -> KeyUsage:
    return await service.key_usage(session, key_id, start, end)

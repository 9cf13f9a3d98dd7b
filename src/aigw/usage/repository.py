"""Queries over ``usage_records``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.usage.models import UsageRecord


def _day() -> Any:
    return func.date(func.timezone("UTC", UsageRecord.created_at))


async def daily_totals(
    session: AsyncSession, api_key_id: uuid.UUID, start: datetime, end: datetime
) -> Sequence[Row[Any]]:
    """Sums per (UTC day, outcome, endpoint) for one key over ``[start, end)``, by day."""
    day = _day().label("day")
    stmt = (
        select(
            day,
            UsageRecord.outcome,
            UsageRecord.endpoint,
            func.count().label("requests"),
            func.coalesce(func.sum(UsageRecord.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(UsageRecord.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(UsageRecord.upstream_input_tokens), 0).label(
                "upstream_input_tokens"
            ),
            func.coalesce(func.sum(UsageRecord.upstream_output_tokens), 0).label(
                "upstream_output_tokens"
            ),
            func.count().filter(UsageRecord.input_limit_exceeded).label("input_limit_exceeded"),
            func.count().filter(UsageRecord.output_limit_exceeded).label("output_limit_exceeded"),
        )
        .where(
            UsageRecord.api_key_id == api_key_id,
            UsageRecord.created_at >= start,
            UsageRecord.created_at < end,
        )
        .group_by(literal_column("day"), UsageRecord.outcome, UsageRecord.endpoint)
        .order_by(literal_column("day"))
    )
    return (await session.execute(stmt)).all()


async def drift_by_model(
    session: AsyncSession, api_key_id: uuid.UUID, start: datetime, end: datetime
) -> Sequence[Row[Any]]:
    """Per model, the gateway's and the upstream's counts over the requests where
    both describe the same text: input wherever the upstream reported it, output
    for answers relayed whole (``completed``)."""
    has_input = UsageRecord.upstream_input_tokens.is_not(None)
    has_output = (UsageRecord.outcome == "completed") & UsageRecord.upstream_output_tokens.is_not(
        None
    )

    def total(column: Any, where: Any, label: str) -> Any:
        return func.coalesce(func.sum(column).filter(where), 0).label(label)

    stmt = (
        select(
            UsageRecord.model,
            func.count().filter(has_input).label("input_requests"),
            total(UsageRecord.input_tokens, has_input, "input_tokens"),
            total(UsageRecord.upstream_input_tokens, has_input, "upstream_input_tokens"),
            func.count().filter(has_output).label("output_requests"),
            total(UsageRecord.output_tokens, has_output, "output_tokens"),
            total(UsageRecord.upstream_output_tokens, has_output, "upstream_output_tokens"),
        )
        .where(
            UsageRecord.api_key_id == api_key_id,
            UsageRecord.created_at >= start,
            UsageRecord.created_at < end,
            has_input | has_output,
        )
        .group_by(UsageRecord.model)
        .order_by(UsageRecord.model)
    )
    return (await session.execute(stmt)).all()


async def last_recorded_alias(session: AsyncSession, api_key_id: uuid.UUID) -> str | None:
    """The alias on the key's most recent record (for keys since deleted)."""
    stmt = (
        select(UsageRecord.alias)
        .where(UsageRecord.api_key_id == api_key_id)
        .order_by(UsageRecord.created_at.desc())
        .limit(1)
    )
    return await session.scalar(stmt)

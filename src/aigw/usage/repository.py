"""Queries over ``usage_records``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, literal_column, select

from aigw.usage.models import UsageRecord


def _day() -> Any:
    return func.date(func.timezone("UTC", UsageRecord.created_at))


def daily_totals(api_key_id: uuid.UUID, start: datetime, end: datetime) -> Select:
    """Sums per (UTC day, outcome) for one key over ``[start, end)``."""
    day = _day().label("day")
    return (
        select(
            day,
            UsageRecord.outcome,
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
        .group_by(literal_column("day"), UsageRecord.outcome)
        .order_by(literal_column("day"))
    )


def last_recorded_alias(api_key_id: uuid.UUID) -> Select:
    """The alias on the key's most recent record (for keys since deleted)."""
    return (
        select(UsageRecord.alias)
        .where(UsageRecord.api_key_id == api_key_id)
        .order_by(UsageRecord.created_at.desc())
        .limit(1)
    )

"""Usage reports: totals by outcome and by endpoint, and per-day buckets, for one key."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from aigw.apikeys import service as apikeys
from aigw.db.filters import utc_instant
from aigw.errors import NotFound, ValidationFailed
from aigw.usage import repository
from aigw.usage.schemas import DayUsage, KeyUsage, ModelDrift, OutcomeUsage, UsageFigures

DEFAULT_PERIOD = timedelta(days=30)
MAX_PERIOD = timedelta(days=366)
_SUMMED = (
    "requests",
    "input_tokens",
    "output_tokens",
    "upstream_input_tokens",
    "upstream_output_tokens",
    "input_limit_exceeded",
    "output_limit_exceeded",
)


def _utc(value: datetime, field: str) -> datetime:
    try:
        return utc_instant(value)
    except ValueError as exc:
        raise _invalid(field, str(exc)) from None


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {message}", errors=[{"field": field, "message": message, "type": "value_error"}]
    )


def resolve_period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """``[from, to)``: *to* defaults to now, *from* to 30 days before *to*; naive
    times are UTC; at most 366 days; both within the years 1 to 9999 in UTC."""
    end = _utc(end, "to") if end is not None else datetime.now(UTC)
    if start is not None:
        start = _utc(start, "from")
    else:
        try:
            start = end - DEFAULT_PERIOD
        except OverflowError:
            raise _invalid("from", "30 days before 'to' is before the year 1") from None
    errors = []
    if start >= end:
        errors.append({"field": "from", "message": "must be before 'to'", "type": "value_error"})
    elif end - start > MAX_PERIOD:
        errors.append(
            {"field": "from", "message": "the period is at most 366 days", "type": "value_error"}
        )
    if errors:
        raise ValidationFailed("; ".join(e["message"] for e in errors), errors=errors)
    return start, end


def _add(figures: UsageFigures, row: object) -> None:
    for name in _SUMMED:
        setattr(figures, name, getattr(figures, name) + int(getattr(row, name)))
    for group, name in (
        (figures.by_outcome, row.outcome),  # type: ignore[attr-defined]
        (figures.by_endpoint, row.endpoint),  # type: ignore[attr-defined]
    ):
        bucket = group.setdefault(name, OutcomeUsage())
        bucket.requests += int(row.requests)  # type: ignore[attr-defined]
        bucket.input_tokens += int(row.input_tokens)  # type: ignore[attr-defined]
        bucket.output_tokens += int(row.output_tokens)  # type: ignore[attr-defined]


async def key_usage(
    session: AsyncSession,
    api_key_id: uuid.UUID,
    start: datetime | None,
    end: datetime | None,
) -> KeyUsage:
    """Usage of one key over a period; works for deleted keys (by id), since
    usage records keep no foreign key to the key."""
    period_start, period_end = resolve_period(start, end)
    alias = await apikeys.alias_of(session, api_key_id)
    deleted = alias is None
    if deleted:
        alias = await repository.last_recorded_alias(session, api_key_id)
        if alias is None:
            raise NotFound(f"no AI API key with id {api_key_id}, and no usage recorded for it")
    rows = await repository.daily_totals(session, api_key_id, period_start, period_end)

    totals = UsageFigures()
    days: dict[object, DayUsage] = {}
    first_day = period_start.date()
    last_day = (period_end - timedelta(microseconds=1)).date()
    # By offset, never past last_day: the day after 9999-12-31 does not exist.
    for offset in range((last_day - first_day).days + 1):
        day = first_day + timedelta(days=offset)
        days[day] = DayUsage(date=day)
    for row in rows:
        _add(totals, row)
        bucket = days.get(row.day)
        if bucket is not None:
            _add(bucket, row)
    drift = [
        ModelDrift.model_validate(row, from_attributes=True)
        for row in await repository.drift_by_model(session, api_key_id, period_start, period_end)
    ]
    assert alias is not None
    return KeyUsage(
        api_key_id=api_key_id,
        alias=alias,
        deleted=deleted,
        **{"from": period_start},
        to=period_end,
        totals=totals,
        days=list(days.values()),
        drift=drift,
    )

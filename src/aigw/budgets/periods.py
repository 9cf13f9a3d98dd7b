"""Calendar periods (in one configured time zone) and one-minute rate windows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

PERIODS = ("day", "week", "month", "total")
# The one "period" a `total` budget has.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RATE_WINDOW_SECONDS = 60


def period_bounds(period: str, now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime | None]:
    """``(start, end)`` in UTC of the *period* containing *now*: a calendar day,
    ISO week (from Monday) or month starting at local midnight in *zone*; a
    ``total`` period starts at the epoch and never ends (``end`` is None)."""
    if period == "total":
        return EPOCH, None
    local = now.astimezone(zone)
    day = local.date()
    if period == "day":
        first, nxt = day, day + timedelta(days=1)
    elif period == "week":
        first = day - timedelta(days=day.weekday())
        nxt = first + timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")

    def midnight(d: object) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=zone).astimezone(UTC)  # type: ignore[attr-defined]

    return midnight(first), midnight(nxt)


def rate_window(now: datetime) -> tuple[datetime, datetime]:
    """The one-minute window (UTC, aligned to the minute) containing *now*."""
    start = now.astimezone(UTC).replace(second=0, microsecond=0)
    return start, start + timedelta(seconds=RATE_WINDOW_SECONDS)


@dataclass(slots=True)
class _Cached:
    start: datetime
    end: datetime | None


class PeriodClock:
    """:func:`period_bounds` for the current moment, recomputed only when a period
    ends (the hot path reads a cached pair and compares one timestamp)."""

    __slots__ = ("_cache", "zone")

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._cache: dict[str, _Cached] = {}

    def bounds(self, period: str, now: datetime) -> tuple[datetime, datetime | None]:
        cached = self._cache.get(period)
        if cached is None or (cached.end is not None and now >= cached.end) or now < cached.start:
            start, end = period_bounds(period, now, self.zone)
            cached = self._cache[period] = _Cached(start, end)
        return cached.start, cached.end

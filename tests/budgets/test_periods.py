"""Budget periods and rate windows, against dates worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from aigw.budgets.periods import EPOCH, PeriodClock, period_bounds, rate_window

UTC_ZONE = ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        # Wednesday 2026-12-02 15:30 UTC.
        ("day", datetime(2026, 12, 2, 15, 30, tzinfo=UTC), (2026, 12, 2), (2026, 12, 3)),
        ("week", datetime(2026, 12, 2, 15, 30, tzinfo=UTC), (2026, 11, 30), (2026, 12, 7)),
        ("month", datetime(2026, 12, 2, 15, 30, tzinfo=UTC), (2026, 12, 1), (2027, 1, 1)),
        # Leap February; the last instant of a day belongs to it.
        ("month", datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC), (2028, 2, 1), (2028, 3, 1)),
        (
            "day",
            datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            (2026, 12, 31),
            (2027, 1, 1),
        ),
        # A Monday at midnight starts its own week.
        ("week", datetime(2026, 11, 30, 0, 0, tzinfo=UTC), (2026, 11, 30), (2026, 12, 7)),
    ],
)
def test_calendar_periods_in_utc(
    period: str, now: datetime, start: tuple[int, int, int], end: tuple[int, int, int]
) -> None:
    assert period_bounds(period, now, UTC_ZONE) == (
        datetime(*start, tzinfo=UTC),
        datetime(*end, tzinfo=UTC),
    )


def test_periods_follow_the_configured_zone() -> None:
    # 2026-12-02 03:00 UTC is still 2026-12-01 22:00 in New York (UTC-5 in winter).
    now = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    start, end = period_bounds("day", now, ZoneInfo("America/New_York"))
    assert (start, end) == (
        datetime(2026, 12, 1, 5, 0, tzinfo=UTC),
        datetime(2026, 12, 2, 5, 0, tzinfo=UTC),
    )
    # A day with a DST change is 23 hours long: 2026-03-08 in New York.
    start, end = period_bounds(
        "day", datetime(2026, 3, 8, 12, 0, tzinfo=UTC), ZoneInfo("America/New_York")
    )
    assert (end - start).total_seconds() == 23 * 3600


def test_total_never_ends() -> None:
    assert period_bounds("total", datetime(2026, 12, 2, tzinfo=UTC), UTC_ZONE) == (EPOCH, None)


def test_rate_window_is_the_minute() -> None:
    start, end = rate_window(datetime(2026, 12, 2, 15, 30, 42, 5, tzinfo=UTC))
    assert start == datetime(2026, 12, 2, 15, 30, tzinfo=UTC)
    assert end == datetime(2026, 12, 2, 15, 31, tzinfo=UTC)


def test_the_clock_rolls_over_at_the_period_end() -> None:
    clock = PeriodClock(UTC_ZONE)
    before = datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC)
    after = datetime(2026, 12, 3, 0, 0, 0, tzinfo=UTC)
    assert clock.bounds("day", before)[0] == datetime(2026, 12, 2, tzinfo=UTC)
    assert clock.bounds("day", after)[0] == datetime(2026, 12, 3, tzinfo=UTC)
    with pytest.raises(ValueError, match="unknown budget period"):
        period_bounds("year", before, UTC_ZONE)

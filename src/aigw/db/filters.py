"""Search conditions shared by the admin domains' repositories."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func


def like_pattern(term: str) -> str:
    """A LIKE pattern matching *term* literally as a substring (``%``/``_`` escaped)."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def contains_ci(column: Any, term: str) -> ColumnElement[bool]:
    """``lower(column)`` holds *term* as a literal substring, case-insensitively: the
    shape the ``lower(...) gin_trgm_ops`` indexes serve."""
    return func.lower(column).like(like_pattern(term.lower()), escape="\\")


def utc_instant(value: datetime) -> datetime:
    """*value* in UTC (naive times are UTC). Raises ``ValueError`` when its UTC
    form is not a date Python can hold (``0001-01-01T00:00:00+14:00`` is year 0
    in UTC, ``9999-12-31T23:59:59-14:00`` year 10000): such a value comes from a
    client and must become a 4xx, not an overflow deep in a query."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside the years 1 to 9999 in UTC") from None

"""Search conditions shared by the admin domains' repositories."""

from __future__ import annotations

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

"""Shapes shared by every admin resource: strict input, pages."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class StrictInput(BaseModel):
    """Request bodies: unknown fields are errors, no silent coercion of types."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
    total: int

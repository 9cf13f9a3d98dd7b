"""Shapes shared by every admin resource: strict input, pages."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator

T = TypeVar("T")


class StrictInput(BaseModel):
    """Request bodies: unknown fields are errors, no silent coercion of types."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)


class PartialUpdate(StrictInput):
    """PATCH bodies: omitted fields stay as they are; an explicit ``null`` is an error."""

    @model_validator(mode="after")
    def _no_explicit_nulls(self) -> PartialUpdate:
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"fields may be omitted but not null: {', '.join(nulls)}")
        return self


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
    total: int

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from aigw.apikeys.models import MAX_LIMIT
from aigw.schemas import PartialUpdate, StrictInput

Status = Literal["enabled", "disabled"]
UsageLimit = Literal["reject", "use_anyway"]
SortField = Literal["alias", "-alias", "created_at", "-created_at", "updated_at", "-updated_at"]
TokenLimit = Annotated[int, Field(ge=0, le=MAX_LIMIT)]


def _no_control_chars(value: str) -> str:
    if not value:
        raise ValueError("must not be blank")
    if any(not ch.isprintable() for ch in value):
        raise ValueError("must not contain control characters")
    return value


Alias = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_no_control_chars),
]
# Printable ASCII: what every provider's key format uses; also keeps it out of
# header-injection territory when sent upstream.
KeyCode = Annotated[
    str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[\x20-\x7e]+$")
]
ProviderRef = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ModelRef = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ApiKeyCreate(StrictInput):
    alias: Alias
    provider: ProviderRef
    model: ModelRef
    status: Status = "disabled"
    key_code: KeyCode = Field(repr=False)
    input_limit: TokenLimit
    output_limit: TokenLimit = 0
    usage_limit: UsageLimit = "reject"


class ApiKeyUpdate(PartialUpdate):
    """Partial update: only the fields sent change; a new ``key_code`` replaces the old."""

    alias: Alias | None = None
    provider: ProviderRef | None = None
    model: ModelRef | None = None
    status: Status | None = None
    key_code: KeyCode | None = Field(default=None, repr=False)
    input_limit: TokenLimit | None = None
    output_limit: TokenLimit | None = None
    usage_limit: UsageLimit | None = None


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    alias: str
    provider: str
    model: str
    status: Status
    key_code_masked: str
    token_prefix: str
    input_limit: int
    output_limit: int
    usage_limit: UsageLimit
    created_at: datetime
    updated_at: datetime
    version: int


class ApiKeyWithToken(ApiKeyRead):
    """Returned by create and token rotation only: ``token`` is shown this once."""

    token: str


class ApiKeyPage(BaseModel):
    items: list[ApiKeyRead]
    next_cursor: str | None
    total: int

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from aigw.apikeys.bounds import MAX_BUDGET, MAX_LIMIT, MAX_RPM
from aigw.schemas import PartialUpdate, StrictInput

Status = Literal["enabled", "disabled"]
UsageLimit = Literal["reject", "use_anyway"]
SortField = Literal["alias", "-alias", "created_at", "-created_at", "updated_at", "-updated_at"]
TokenLimit = Annotated[int, Field(ge=0, le=MAX_LIMIT)]
BudgetPeriod = Literal["day", "week", "month", "total"]
BudgetTokens = Annotated[
    int, Field(ge=0, le=MAX_BUDGET, description="Tokens (input + output) per period; 0 = none")
]
RpmLimit = Annotated[int, Field(ge=0, le=MAX_RPM, description="Requests per minute; 0 = none")]
TpmLimit = Annotated[int, Field(ge=0, le=MAX_BUDGET, description="Tokens per minute; 0 = none")]


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
    budget_tokens: BudgetTokens = 0
    budget_period: BudgetPeriod = "month"
    rpm_limit: RpmLimit = 0
    tpm_limit: TpmLimit = 0


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
    budget_tokens: BudgetTokens | None = None
    budget_period: BudgetPeriod | None = None
    rpm_limit: RpmLimit | None = None
    tpm_limit: TpmLimit | None = None


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
    budget_tokens: int = 0
    budget_period: BudgetPeriod = "month"
    rpm_limit: int = 0
    tpm_limit: int = 0
    budget_used: int = Field(
        default=0, description="Tokens charged to the budget in the current period"
    )
    budget_resets_at: datetime | None = Field(
        default=None,
        description="When the current budget period ends (none for a `total` budget or no budget)",
    )
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

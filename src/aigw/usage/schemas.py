"""Shapes of ``GET /apikeys/{id}/usage``."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field

from aigw.usage.models import ENDPOINTS, OUTCOMES


class OutcomeUsage(BaseModel):
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class UsageFigures(BaseModel):
    requests: int = Field(default=0, description="Proxied requests, whatever their outcome")
    input_tokens: int = Field(default=0, description="Input tokens counted by the gateway")
    output_tokens: int = Field(default=0, description="Output tokens counted by the gateway")
    upstream_input_tokens: int = Field(
        default=0, description="prompt_tokens reported by the upstream"
    )
    upstream_output_tokens: int = Field(
        default=0, description="completion_tokens reported by the upstream"
    )
    input_limit_exceeded: int = Field(default=0, description="Requests over the input limit")
    output_limit_exceeded: int = Field(default=0, description="Requests over the output limit")
    by_outcome: dict[str, OutcomeUsage] = Field(
        default_factory=lambda: {outcome: OutcomeUsage() for outcome in OUTCOMES},
        description="Per outcome: " + ", ".join(OUTCOMES),
    )
    by_endpoint: dict[str, OutcomeUsage] = Field(
        default_factory=lambda: {endpoint: OutcomeUsage() for endpoint in ENDPOINTS},
        description="Per /v1 endpoint: " + ", ".join(ENDPOINTS),
    )


class DayUsage(UsageFigures):
    date: dt.date = Field(description="The UTC day")


class KeyUsage(BaseModel):
    api_key_id: uuid.UUID
    alias: str = Field(description="The key's alias (as last recorded, if it was deleted)")
    deleted: bool = Field(description="The key no longer exists; its history does")
    from_: dt.datetime = Field(alias="from", description="Start of the period (inclusive)")
    to: dt.datetime = Field(description="End of the period (exclusive)")
    totals: UsageFigures
    days: list[DayUsage] = Field(description="One bucket per UTC day of the period")

    model_config = {"populate_by_name": True}

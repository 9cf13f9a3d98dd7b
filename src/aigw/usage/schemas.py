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


class ModelDrift(BaseModel):
    """How far the gateway's counts are from the upstream's, for one model."""

    model: str
    input_requests: int = Field(description="Requests whose upstream reported prompt_tokens")
    input_tokens: int = Field(description="The gateway's input count over those requests")
    upstream_input_tokens: int = Field(description="The upstream's prompt_tokens over them")
    output_requests: int = Field(
        description="Answers relayed whole (completed) whose upstream reported completion_tokens"
    )
    output_tokens: int = Field(description="The gateway's output count over those answers")
    upstream_output_tokens: int = Field(description="The upstream's completion_tokens over them")


class KeyUsage(BaseModel):
    api_key_id: uuid.UUID
    alias: str = Field(description="The key's alias (as last recorded, if it was deleted)")
    deleted: bool = Field(description="The key no longer exists; its history does")
    from_: dt.datetime = Field(alias="from", description="Start of the period (inclusive)")
    to: dt.datetime = Field(description="End of the period (exclusive)")
    totals: UsageFigures
    days: list[DayUsage] = Field(description="One bucket per UTC day of the period")
    drift: list[ModelDrift] = Field(
        default_factory=list,
        description="Per model: the gateway's token counts next to the upstream's, over the "
        "requests where both describe the same text (counting rules that are off show here)",
    )

    model_config = {"populate_by_name": True}

"""The shapes ``openapi.json`` documents for the Messages API routes (the
pipeline reads and writes bytes itself; these only describe them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class MessageParam(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(description="user or assistant")
    content: str | list[dict[str, Any]]


class MessageCreateRequest(BaseModel):
    """Anthropic's Messages request. ``max_tokens`` is the requested output bound
    the key's output limit judges; ``model`` must be the key's (omit it to use it).
    To ``anthropic`` providers the body goes as sent; to other kinds it is
    translated (docs/providers.md lists what carries over)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, description="The key's model; omit to use it")
    messages: list[MessageParam] = Field(min_length=1)
    max_tokens: int = Field(ge=1, le=10_000_000)
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = False
    tools: list[dict[str, Any]] | None = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class MessageTokensCount(BaseModel):
    input_tokens: int


class Message(BaseModel):
    """Anthropic's Message object; ``stop_reason`` is ``max_tokens`` where the
    gateway cut the output at the key's limit."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str | None = None
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: dict[str, Any]


class AnthropicErrorBody(BaseModel):
    type: str
    message: str
    code: str | None = Field(default=None, description="The gateway's stable error code")


class AnthropicError(BaseModel):
    type: str = "error"
    error: AnthropicErrorBody

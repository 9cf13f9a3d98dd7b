"""The shapes ``/v1`` documents in ``openapi.json`` (what the routes in
:mod:`aigw.proxy.router` declare). Documentation only: the pipeline reads
bodies itself, so unknown fields pass through and nothing here validates a
request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(description="system, developer, user, assistant, tool or function")
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's Chat Completions request. Every field is forwarded unchanged
    (unknown ones too), except: ``model`` defaults to the key's model and must be
    it; with a ``reject`` key and an output limit, a missing ``max_tokens`` /
    ``max_completion_tokens`` is set to the limit; streams always ask the
    upstream for usage (``stream_options.include_usage``)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, description="The key's model; omit to use it")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None


class ChatCompletion(BaseModel):
    """OpenAI's chat completion object (``stream: false``), as the upstream sent it;
    ``finish_reason`` is ``"length"`` where the gateway cut the output."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


class Model(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[Model]


class ResponseCreateRequest(BaseModel):
    """OpenAI's Responses request. Every field is forwarded unchanged (unknown ones
    too), except: ``model`` defaults to the key's model and must be it; with a
    ``reject`` key and an output limit, a missing ``max_output_tokens`` is set to
    the limit. ``previous_response_id``, ``conversation``, a stored ``prompt``,
    ``item_reference`` items and ``input_file`` parts cannot be counted: refused
    (400 ``input_not_countable``) for a ``reject`` key with an input limit."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, description="The key's model; omit to use it")
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    stream: bool | None = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None


class ResponseObject(BaseModel):
    """OpenAI's response object, as the upstream sent it; ``status: "incomplete"``
    with ``incomplete_details.reason: "max_output_tokens"`` where the gateway cut
    the output."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "response"
    created_at: float
    status: str | None = None
    incomplete_details: dict[str, Any] | None = None
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, forwarded unchanged except that ``model``
    defaults to the key's model and must be it. The key's input limit applies to
    the whole ``input``; no output limit applies."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, description="The key's model; omit to use it")
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str | None = None
    dimensions: int | None = None


class EmbeddingList(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: str = "list"
    data: list[dict[str, Any]]
    model: str
    usage: dict[str, Any] | None = None

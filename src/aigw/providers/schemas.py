from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from aigw.encodings import encoding_for_model
from aigw.schemas import PartialUpdate, StrictInput

ProviderName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]
ProviderKind = Literal["openai", "anthropic", "gemini", "azure_openai"]
InputCounting = Literal["tiktoken", "upstream"]
# Kinds whose provider has a token-counting API the gateway can ask.
UPSTREAM_COUNTING_KINDS = frozenset({"gemini", "anthropic"})
ApiVersion = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
]
Deployment = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]
CountingMargin = Annotated[int, Field(ge=0, le=100)]
DEFAULT_AZURE_API_VERSION = "2024-10-21"
Encoding = Literal["o200k_base", "cl100k_base"]
ModelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$"),
]


def _check_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; put the key code on the AI API key")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value.rstrip("/")


BaseUrl = Annotated[
    str,
    StringConstraints(min_length=8, max_length=2048, pattern=r"^[\x21-\x7e]+$"),
    AfterValidator(_check_url),
]


def default_encoding(model: str) -> Encoding:
    """SPEC §1's choice for a model listed without an ``encoding``."""
    return encoding_for_model(model)


class ProviderModelIn(StrictInput):
    name: ModelName
    encoding: Encoding | None = None
    deployment: Deployment | None = Field(
        default=None,
        description="azure_openai only: the deployment serving this model (default: its name)",
    )


def _unique_models(models: list[ProviderModelIn]) -> list[ProviderModelIn]:
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise ValueError(f"model {model.name!r} is listed twice")
        seen.add(model.name)
    return models


ModelList = Annotated[
    list[ProviderModelIn], Field(min_length=1, max_length=500), AfterValidator(_unique_models)
]


def check_kind_settings(
    kind: str,
    *,
    api_version: str | None,
    input_counting: str,
    models: list[ProviderModelIn] | list[Any],
) -> None:
    """The settings a provider of *kind* may carry; raises ``ValueError`` naming
    the field that does not fit the kind."""
    if api_version is not None and kind != "azure_openai":
        raise ValueError("api_version: only azure_openai providers take an api_version")
    if input_counting == "upstream" and kind not in UPSTREAM_COUNTING_KINDS:
        raise ValueError(
            "input_counting: 'upstream' needs a provider with a token-counting API "
            "(gemini, anthropic)"
        )
    if kind != "azure_openai" and any(getattr(m, "deployment", None) for m in models):
        raise ValueError("models: only azure_openai models take a deployment")


class ProviderSettings(StrictInput):
    """Settings some kinds take (see docs/providers.md)."""

    api_version: ApiVersion | None = Field(
        default=None,
        description="azure_openai only: the api-version of every call "
        f"(default {DEFAULT_AZURE_API_VERSION})",
    )
    input_counting: InputCounting = Field(
        default="tiktoken",
        description="Who counts input for input limits: tiktoken (the gateway), or the "
        "provider's token-counting API (gemini, anthropic), with a tiktoken estimate + "
        "counting_margin percent when the counter does not answer in time",
    )
    counting_margin: CountingMargin = Field(
        default=10,
        description="Percent added to the tiktoken estimate when the upstream counter fails",
    )


class ProviderCreate(ProviderSettings):
    name: ProviderName
    kind: ProviderKind = "openai"
    base_url: BaseUrl
    models: ModelList

    @model_validator(mode="after")
    def _settings_fit_kind(self) -> ProviderCreate:
        check_kind_settings(
            self.kind,
            api_version=self.api_version,
            input_counting=self.input_counting,
            models=self.models,
        )
        return self


class ProviderUpdate(PartialUpdate):
    """Partial update; ``models`` replaces the whole list when given."""

    name: ProviderName | None = None
    kind: ProviderKind | None = None
    base_url: BaseUrl | None = None
    models: ModelList | None = None
    api_version: ApiVersion | None = None
    input_counting: InputCounting | None = None
    counting_margin: CountingMargin | None = None


class ProviderModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    encoding: Encoding
    deployment: str | None = Field(
        default=None, description="azure_openai only; absent when the model has none"
    )

    @model_serializer(mode="wrap")
    def _omit_absent_deployment(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Only Azure models have one: other kinds' model lists stay {name, encoding}.
        data = handler(self)
        if isinstance(data, dict) and data.get("deployment") is None:
            data.pop("deployment", None)
        return data


class ProviderRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: ProviderKind
    base_url: str
    models: list[ProviderModelRead]
    api_version: str | None = None
    input_counting: InputCounting = "tiktoken"
    counting_margin: int = 10
    created_at: datetime
    updated_at: datetime
    version: int

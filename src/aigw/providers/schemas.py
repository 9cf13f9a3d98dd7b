from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from aigw.encodings import encoding_for_model
from aigw.schemas import PartialUpdate, StrictInput

ProviderName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]
ProviderKind = Literal["openai", "anthropic"]
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


class ProviderCreate(StrictInput):
    name: ProviderName
    kind: ProviderKind = "openai"
    base_url: BaseUrl
    models: ModelList


class ProviderUpdate(PartialUpdate):
    """Partial update; ``models`` replaces the whole list when given."""

    name: ProviderName | None = None
    kind: ProviderKind | None = None
    base_url: BaseUrl | None = None
    models: ModelList | None = None


class ProviderModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    encoding: Encoding


class ProviderRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: ProviderKind
    base_url: str
    models: list[ProviderModelRead]
    created_at: datetime
    updated_at: datetime
    version: int

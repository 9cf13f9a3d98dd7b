"""Provider use cases: validation against the database and the upstream policy.

Whether AI API keys still use a provider or a model is the apikeys domain's
knowledge, asked through its service; the foreign keys enforce it regardless.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.apikeys import service as apikeys
from aigw.audit import service as audit
from aigw.db.constraints import flush
from aigw.errors import (
    ModelInUse,
    ProviderInUse,
    ProviderNameTaken,
    UnknownModel,
    UnknownProvider,
    UpstreamNotAllowed,
    ValidationFailed,
)
from aigw.netpolicy import UpstreamRefused, check_upstream_url
from aigw.pagination import decode_cursor, encode_cursor
from aigw.providers.models import Provider, ProviderModel
from aigw.providers.repository import ProviderRepository
from aigw.providers.schemas import (
    ProviderCreate,
    ProviderModelIn,
    ProviderRead,
    ProviderUpdate,
    check_kind_settings,
    default_encoding,
)
from aigw.schemas import Page


def snapshot(provider: Provider) -> dict[str, Any]:
    return ProviderRead.model_validate(provider).model_dump(mode="json")


def _check_base_url(url: str, allow_private: bool) -> None:
    try:
        check_upstream_url(url, allow_private=allow_private)
    except UpstreamRefused as exc:
        raise UpstreamNotAllowed(
            str(exc),
            errors=[{"field": "base_url", "message": str(exc), "type": "upstream_not_allowed"}],
        ) from None


def _model_rows(models: list[ProviderModelIn]) -> list[ProviderModel]:
    return [
        ProviderModel(
            name=m.name,
            encoding=m.encoding or default_encoding(m.name),
            deployment=m.deployment,
            position=i,
        )
        for i, m in enumerate(models)
    ]


def _check_settings(provider: Provider) -> None:
    """The merged provider's settings fit its kind (a PATCH can change either side)."""
    try:
        check_kind_settings(
            provider.kind,
            api_version=provider.api_version,
            input_counting=provider.input_counting,
            models=provider.models,
        )
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise ValidationFailed(
            str(exc), errors=[{"field": field, "message": message, "type": "value_error"}]
        ) from None


def _name_taken(name: str | None) -> dict[str, Callable[[], Exception]]:
    return {"uq_providers_lower_name": lambda: ProviderNameTaken(f"provider {name!r} exists")}


# Deleting a provider deletes its models: a key referring to either says no.
_KEYS_REFER = ("fk_api_keys_provider_id_providers", "fk_api_keys_model_id_provider_models")


async def create_provider(
    session: AsyncSession, data: ProviderCreate, *, actor: str, allow_private: bool
) -> Provider:
    _check_base_url(data.base_url, allow_private)
    provider = Provider(
        id=uuid.uuid4(),
        name=data.name,
        kind=data.kind,
        base_url=data.base_url,
        api_version=data.api_version,
        input_counting=data.input_counting,
        counting_margin=data.counting_margin,
        models=_model_rows(data.models),
    )
    session.add(provider)
    await flush(session, _name_taken(data.name))
    await session.refresh(provider)
    audit.record(
        session, actor, "create", "provider", provider.id, before=None, after=snapshot(provider)
    )
    return provider


async def get_provider(session: AsyncSession, provider_id: uuid.UUID) -> Provider:
    return await ProviderRepository(session).get_existing(provider_id)


async def resolve_model(
    session: AsyncSession, provider_name: str, model_name: str
) -> tuple[Provider, ProviderModel]:
    """The provider called *provider_name* (case-insensitively) and its model called
    *model_name*; a 422 naming the field when either does not exist."""
    provider = await ProviderRepository(session).get_by_name(provider_name)
    if provider is None:
        raise UnknownProvider(
            f"no provider named {provider_name!r}",
            errors=[
                {"field": "provider", "message": "unknown provider", "type": "unknown_provider"}
            ],
        )
    for model in provider.models:
        if model.name == model_name:
            return provider, model
    raise UnknownModel(
        f"provider {provider.name!r} has no model {model_name!r}",
        errors=[
            {
                "field": "model",
                "message": "unknown model for this provider",
                "type": "unknown_model",
            }
        ],
    )


async def provider_id_named(session: AsyncSession, name: str) -> uuid.UUID | None:
    """The id of the provider called *name* (case-insensitively), if there is one."""
    provider = await ProviderRepository(session).get_by_name(name)
    return None if provider is None else provider.id


async def model_ids_named(session: AsyncSession, name: str) -> list[uuid.UUID]:
    """The ids of every provider's models called *name*."""
    return await ProviderRepository(session).model_ids_named(name)


async def list_providers(
    session: AsyncSession, *, q: str | None, kind: str | None, limit: int, cursor: str | None
) -> Page[ProviderRead]:
    repo = ProviderRepository(session)
    stmt = repo.search(q, kind)
    after = decode_cursor(cursor, {"after"})["after"] if cursor else None
    if after is not None and not isinstance(after, str):
        after = None
    rows = await repo.page(stmt, after, limit + 1)
    total = await repo.count(stmt)
    next_cursor = (
        encode_cursor({"after": rows[limit - 1].name.lower()}) if len(rows) > limit else None
    )
    return Page[ProviderRead](
        items=[ProviderRead.model_validate(p) for p in rows[:limit]],
        next_cursor=next_cursor,
        total=total,
    )


async def update_provider(
    session: AsyncSession,
    provider_id: uuid.UUID,
    data: ProviderUpdate,
    *,
    if_match: int | None,
    actor: str,
    allow_private: bool,
) -> Provider:
    provider = await ProviderRepository(session).get_to_change(provider_id, if_match)
    before = snapshot(provider)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if not changes:
        return provider
    if "base_url" in changes:
        _check_base_url(data.base_url or "", allow_private)
        provider.base_url = changes["base_url"]
    if "name" in changes:
        provider.name = changes["name"]
    if "kind" in changes and changes["kind"] != provider.kind:
        provider.kind = changes["kind"]
        if provider.kind != "azure_openai":
            # Settings only Azure takes mean nothing to the new kind.
            provider.api_version = None
            for model in provider.models:
                model.deployment = None
    for setting in ("api_version", "input_counting", "counting_margin"):
        if setting in changes:
            setattr(provider, setting, changes[setting])
    if data.models is not None:
        wanted = {m.name: m for m in data.models}
        removed = {m.name for m in provider.models} - set(wanted)
        used_ids = await apikeys.models_in_use(session, [m.id for m in provider.models])
        in_use = removed & {m.name for m in provider.models if m.id in used_ids}
        if in_use:
            raise ModelInUse(f"AI API keys still use {sorted(in_use)}")
        by_name = {m.name: m for m in provider.models}
        new_rows = []
        for position, (name, spec) in enumerate(wanted.items()):
            row = by_name.get(name) or ProviderModel(name=name)
            row.encoding = spec.encoding or default_encoding(name)
            row.deployment = spec.deployment
            row.position = position
            new_rows.append(row)
        provider.models = new_rows  # delete-orphan removes the dropped ones
    _check_settings(provider)
    provider.version += 1
    provider.updated_at = func.now()
    await flush(
        session,
        {
            **_name_taken(data.name),
            "fk_api_keys_model_id_provider_models": lambda: ModelInUse(
                "an AI API key now uses a removed model"
            ),
        },
    )
    await session.refresh(provider)
    audit.record(
        session, actor, "update", "provider", provider.id, before=before, after=snapshot(provider)
    )
    return provider


async def delete_provider(
    session: AsyncSession, provider_id: uuid.UUID, *, if_match: int | None, actor: str
) -> None:
    provider = await ProviderRepository(session).get_to_change(provider_id, if_match)
    count = await apikeys.count_keys_of_provider(session, provider.id)
    if count:
        raise ProviderInUse(f"{count} AI API key(s) still use this provider")
    before = snapshot(provider)
    await session.delete(provider)
    # A key created concurrently now refers to it; the foreign key says no.
    in_use = {
        name: lambda: ProviderInUse("AI API keys still use this provider") for name in _KEYS_REFER
    }
    await flush(session, in_use)
    audit.record(session, actor, "delete", "provider", provider_id, before=before, after=None)

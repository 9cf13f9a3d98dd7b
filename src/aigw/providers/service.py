"""Provider use cases: validation against the database and the upstream policy."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.audit import service as audit
from aigw.errors import (
    ModelInUse,
    NotFound,
    PreconditionFailed,
    ProviderInUse,
    ProviderNameTaken,
    UpstreamNotAllowed,
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
        ProviderModel(name=m.name, encoding=m.encoding or default_encoding(m.name), position=i)
        for i, m in enumerate(models)
    ]


def _name_conflict(exc: IntegrityError) -> bool:
    return "uq_providers_lower_name" in str(exc.orig)


def check_version(current: int, if_match: int | None) -> None:
    if if_match is not None and if_match != current:
        raise PreconditionFailed(f"current version is {current}")


async def create_provider(
    session: AsyncSession, data: ProviderCreate, *, actor: str, allow_private: bool
) -> Provider:
    _check_base_url(data.base_url, allow_private)
    provider = Provider(
        id=uuid.uuid4(),
        name=data.name,
        kind=data.kind,
        base_url=data.base_url,
        models=_model_rows(data.models),
    )
    session.add(provider)
    try:
        await session.flush()
    except IntegrityError as exc:
        if _name_conflict(exc):
            raise ProviderNameTaken(f"provider {data.name!r} exists") from None
        raise
    await session.refresh(provider)
    audit.record(
        session, actor, "create", "provider", provider.id, before=None, after=snapshot(provider)
    )
    return provider


async def get_provider(
    session: AsyncSession, provider_id: uuid.UUID, *, for_update: bool = False
) -> Provider:
    provider = await ProviderRepository(session).get(provider_id, for_update=for_update)
    if provider is None:
        raise NotFound(f"no provider with id {provider_id}")
    return provider


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
    repo = ProviderRepository(session)
    provider = await get_provider(session, provider_id, for_update=True)
    check_version(provider.version, if_match)
    before = snapshot(provider)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if not changes:
        return provider
    if "base_url" in changes:
        _check_base_url(data.base_url or "", allow_private)
        provider.base_url = changes["base_url"]
    if "name" in changes:
        provider.name = changes["name"]
    if "kind" in changes:
        provider.kind = changes["kind"]
    if data.models is not None:
        wanted = {m.name: m for m in data.models}
        removed = {m.name for m in provider.models} - set(wanted)
        in_use = removed & await repo.models_in_use(provider.id)
        if in_use:
            raise ModelInUse(f"AI API keys still use {sorted(in_use)}")
        by_name = {m.name: m for m in provider.models}
        new_rows = []
        for position, (name, spec) in enumerate(wanted.items()):
            row = by_name.get(name) or ProviderModel(name=name)
            row.encoding = spec.encoding or default_encoding(name)
            row.position = position
            new_rows.append(row)
        provider.models = new_rows  # delete-orphan removes the dropped ones
    provider.version += 1
    provider.updated_at = func.now()
    try:
        await session.flush()
    except IntegrityError as exc:
        if _name_conflict(exc):
            raise ProviderNameTaken(f"provider {data.name!r} exists") from None
        if "fk_api_keys_model_id" in str(exc.orig):
            raise ModelInUse("an AI API key now uses a removed model") from None
        raise
    await session.refresh(provider)
    audit.record(
        session, actor, "update", "provider", provider.id, before=before, after=snapshot(provider)
    )
    return provider


async def delete_provider(
    session: AsyncSession, provider_id: uuid.UUID, *, if_match: int | None, actor: str
) -> None:
    repo = ProviderRepository(session)
    provider = await get_provider(session, provider_id, for_update=True)
    check_version(provider.version, if_match)
    count = await repo.key_count(provider.id)
    if count:
        raise ProviderInUse(f"{count} AI API key(s) still use this provider")
    before = snapshot(provider)
    await session.delete(provider)
    try:
        await session.flush()
    except IntegrityError:
        # A key created concurrently now refers to it; the foreign key says no.
        raise ProviderInUse("AI API keys still use this provider") from None
    audit.record(session, actor, "delete", "provider", provider_id, before=before, after=None)

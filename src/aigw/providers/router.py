from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from aigw.deps import AdminDep, IfMatchDep, SessionDep, SettingsDep
from aigw.etag import with_etag
from aigw.providers import service
from aigw.providers.schemas import ProviderCreate, ProviderKind, ProviderRead, ProviderUpdate
from aigw.routing import AdminRoute, problem_responses
from aigw.schemas import Page

router = APIRouter(prefix="/providers", tags=["providers"], route_class=AdminRoute)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProviderRead,
    summary="Register an upstream provider and its models",
    responses=problem_responses(409, 422),
)
async def create_provider(
    body: ProviderCreate,
    session: SessionDep,
    actor: AdminDep,
    settings: SettingsDep,
    response: Response,
) -> ProviderRead:
    provider = await service.create_provider(
        session, body, actor=actor, allow_private=settings.allow_private_upstreams
    )
    response.headers["Location"] = f"/providers/{provider.id}"
    return with_etag(response, ProviderRead.model_validate(provider))


@router.get("", response_model=Page[ProviderRead], summary="List providers by name")
async def list_providers(
    session: SessionDep,
    _admin: AdminDep,
    q: Annotated[str | None, Query(max_length=64, description="Substring of the name")] = None,
    kind: Annotated[ProviderKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[ProviderRead]:
    return await service.list_providers(session, q=q, kind=kind, limit=limit, cursor=cursor)


@router.get("/{provider_id}", response_model=ProviderRead, responses=problem_responses(404))
async def get_provider(
    provider_id: uuid.UUID, session: SessionDep, _admin: AdminDep, response: Response
) -> ProviderRead:
    provider = await service.get_provider(session, provider_id)
    return with_etag(response, ProviderRead.model_validate(provider))


@router.patch(
    "/{provider_id}",
    response_model=ProviderRead,
    summary="Change a provider; `models` replaces the list",
    responses=problem_responses(404, 409, 412, 422),
)
async def update_provider(
    provider_id: uuid.UUID,
    body: ProviderUpdate,
    session: SessionDep,
    actor: AdminDep,
    settings: SettingsDep,
    if_match: IfMatchDep,
    response: Response,
) -> ProviderRead:
    provider = await service.update_provider(
        session,
        provider_id,
        body,
        if_match=if_match,
        actor=actor,
        allow_private=settings.allow_private_upstreams,
    )
    return with_etag(response, ProviderRead.model_validate(provider))


@router.delete(
    "/{provider_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 409, 412),
)
async def delete_provider(
    provider_id: uuid.UUID, session: SessionDep, actor: AdminDep, if_match: IfMatchDep
) -> Response:
    await service.delete_provider(session, provider_id, if_match=if_match, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

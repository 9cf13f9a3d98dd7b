from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from aigw.apikeys import service
from aigw.apikeys.schemas import (
    ApiKeyCreate,
    ApiKeyPage,
    ApiKeyRead,
    ApiKeyUpdate,
    ApiKeyWithToken,
    SortField,
    Status,
    UsageLimit,
)
from aigw.apikeys.search import KeyFilters
from aigw.config import Settings
from aigw.deps import (
    AdminDep,
    BudgetCountersDep,
    HasherDep,
    IfMatchDep,
    KeyRingDep,
    SessionDep,
    SettingsDep,
    budget_counters,
)
from aigw.errors import PROBLEM_JSON
from aigw.etag import with_etag
from aigw.routing import AdminRoute, problem_responses

router = APIRouter(prefix="/apikeys", tags=["apikeys"], route_class=AdminRoute)

# The routes that answer with a key's budget use read it from the budget store:
# with AIGW_REDIS_URL set, a Redis that does not answer is a 503 of its own
# (docs/budgets.md, "PostgreSQL or Redis").
_STORE_DOWN: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The database is unavailable (`database_unavailable`), or the Redis "
        "budget store is (`budget_store_unavailable`); retry after Retry-After seconds",
        "content": {PROBLEM_JSON: {}},
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyWithToken,
    summary="Create an AI API key; the response carries its client token, once",
    responses=problem_responses(409, 422) | _STORE_DOWN,
)
async def create_api_key(
    body: ApiKeyCreate,
    session: SessionDep,
    actor: AdminDep,
    keyring: KeyRingDep,
    hasher: HasherDep,
    response: Response,
    settings: SettingsDep,
    counters: BudgetCountersDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Retry-safe creation: the same key and body give the same result "
            "(for 24 h); the same key with another body is 409.",
        ),
    ] = None,
) -> ApiKeyWithToken:
    created, replayed = await service.create_api_key(
        session, body, keyring=keyring, hasher=hasher, actor=actor, idempotency_key=idempotency_key
    )
    await service.add_budget_usage(session, [created], settings.budget_timezone, counters)
    response.headers["Location"] = f"/apikeys/{created.id}"
    with_etag(response, created)
    response.headers["Cache-Control"] = "no-store"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created


@router.get("", response_model=ApiKeyPage, summary="Search AI API keys", responses=_STORE_DOWN)
async def search_api_keys(
    session: SessionDep,
    _admin: AdminDep,
    request: Request,
    q: Annotated[
        str | None,
        Query(
            max_length=64, description="Case-insensitive substring of the alias, matched literally"
        ),
    ] = None,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    provider: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    usage_limit: Annotated[UsageLimit | None, Query()] = None,
    sort: Annotated[SortField, Query()] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    filters = KeyFilters(
        q=q, status=status_, provider=provider, model=model, usage_limit=usage_limit
    )
    page = await service.search_api_keys(session, filters, sort=sort, limit=limit, cursor=cursor)
    # The settings from the app, not SettingsDep: a plain-def dependency costs a
    # hop to the thread pool, and this route is the one that must stay fast.
    settings: Settings = request.app.state.settings
    counters = budget_counters(request)
    await service.add_budget_usage_to_page(session, page, settings.budget_timezone, counters)
    # The page's JSON as ApiKeyPage writes it (response_model documents it), built
    # once from the rows: service.KeyPage.
    return Response(page.json(), media_type="application/json")


@router.get("/{key_id}", response_model=ApiKeyRead, responses=problem_responses(404) | _STORE_DOWN)
async def get_api_key(
    key_id: uuid.UUID,
    session: SessionDep,
    _admin: AdminDep,
    response: Response,
    settings: SettingsDep,
    counters: BudgetCountersDep,
) -> ApiKeyRead:
    key = service.to_read(await service.get_api_key(session, key_id))
    await service.add_budget_usage(session, [key], settings.budget_timezone, counters)
    return with_etag(response, key)


@router.patch(
    "/{key_id}",
    response_model=ApiKeyRead,
    summary="Change any writable field; a new key_code replaces the old",
    responses=problem_responses(404, 409, 412, 422) | _STORE_DOWN,
)
async def update_api_key(
    key_id: uuid.UUID,
    body: ApiKeyUpdate,
    session: SessionDep,
    actor: AdminDep,
    keyring: KeyRingDep,
    if_match: IfMatchDep,
    response: Response,
    settings: SettingsDep,
    counters: BudgetCountersDep,
) -> ApiKeyRead:
    key = await service.update_api_key(
        session,
        key_id,
        body,
        if_match=if_match,
        keyring=keyring,
        actor=actor,
        budget_zone=settings.budget_timezone,
        counters=counters,
    )
    read = service.to_read(key)
    await service.add_budget_usage(session, [read], settings.budget_timezone, counters)
    return with_etag(response, read)


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a key; its usage history stays readable",
    responses=problem_responses(404, 412),
)
async def delete_api_key(
    key_id: uuid.UUID, session: SessionDep, actor: AdminDep, if_match: IfMatchDep
) -> Response:
    await service.delete_api_key(session, key_id, if_match=if_match, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{key_id}/token",
    response_model=ApiKeyWithToken,
    summary="Rotate the client token; the old one stops working at once",
    responses=problem_responses(404, 412) | _STORE_DOWN,
)
async def rotate_api_key_token(
    key_id: uuid.UUID,
    session: SessionDep,
    actor: AdminDep,
    hasher: HasherDep,
    if_match: IfMatchDep,
    response: Response,
    settings: SettingsDep,
    counters: BudgetCountersDep,
) -> ApiKeyWithToken:
    rotated = await service.rotate_token(
        session, key_id, if_match=if_match, hasher=hasher, actor=actor
    )
    await service.add_budget_usage(session, [rotated], settings.budget_timezone, counters)
    with_etag(response, rotated)
    response.headers["Cache-Control"] = "no-store"
    return rotated

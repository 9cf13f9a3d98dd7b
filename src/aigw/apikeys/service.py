"""AI API key use cases. Secrets are sealed or hashed here and never leave in clear,
except the client token in the one response that issues it."""

from __future__ import annotations

import hashlib
import operator
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.apikeys import search
from aigw.apikeys.models import ApiKey, IdempotencyRecord
from aigw.apikeys.repository import ApiKeyRepository
from aigw.apikeys.schemas import ApiKeyCreate, ApiKeyRead, ApiKeyUpdate, ApiKeyWithToken
from aigw.apikeys.search import KeyConditions, KeyFilters
from aigw.audit import service as audit
from aigw.budgets import service as budgets
from aigw.budgets.redis_store import RedisBudgetStore
from aigw.crypto import (
    KeyRing,
    TokenHasher,
    idempotency_response_aad,
    key_code_aad,
    mask_secret,
)
from aigw.db.constraints import flush
from aigw.db.filters import utc_instant
from aigw.errors import AliasTaken, IdempotencyKeyReused
from aigw.pagination import InvalidCursor, decode_cursor, encode_cursor
from aigw.providers import service as providers

IDEMPOTENCY_TTL = timedelta(hours=24)


def to_read(key: ApiKey) -> ApiKeyRead:
    return ApiKeyRead(
        id=key.id,
        alias=key.alias,
        provider=key.provider.name,
        model=key.model.name,
        status=key.status,  # type: ignore[arg-type]
        key_code_masked=key.key_code_masked,
        token_prefix=key.token_prefix,
        input_limit=key.input_limit,
        output_limit=key.output_limit,
        usage_limit=key.usage_limit,  # type: ignore[arg-type]
        budget_tokens=key.budget_tokens,
        budget_period=key.budget_period,  # type: ignore[arg-type]
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        created_at=key.created_at,
        updated_at=key.updated_at,
        version=key.version,
    )


def _snapshot(key: ApiKey) -> dict[str, Any]:
    return to_read(key).model_dump(mode="json", exclude={"budget_used", "budget_resets_at"})


async def add_budget_usage(
    session: AsyncSession,
    reads: list[ApiKeyRead],
    zone: str,
    counters: RedisBudgetStore | None = None,
) -> None:
    """Fill in ``budget_used`` and ``budget_resets_at`` of *reads* (one query, or
    one Redis round trip when *counters* holds them)."""
    status = await budgets.current_usage(
        session,
        [(read.id, read.budget_period) for read in reads if read.budget_tokens],
        ZoneInfo(zone),
        counters,
    )
    for read in reads:
        if read.budget_tokens:
            read.budget_used, read.budget_resets_at = status[read.id]


async def add_budget_usage_to_page(
    session: AsyncSession,
    page: KeyPage,
    zone: str,
    counters: RedisBudgetStore | None = None,
) -> None:
    """:func:`add_budget_usage` for the items of a search's page."""
    budgeted = [item for item in page.items if item["budget_tokens"]]
    if not budgeted:  # no key with a budget: nothing to read
        return
    status = await budgets.current_usage(
        session,
        [(item["id"], item["budget_period"]) for item in budgeted],
        ZoneInfo(zone),
        counters,
    )
    for item in budgeted:
        used, resets_at = status[item["id"]]
        item["budget_used"] = used
        item["budget_resets_at"] = None if resets_at is None else _json_datetime(resets_at)


def _alias_taken(alias: str | None) -> dict[str, Any]:
    return {"uq_api_keys_lower_alias": lambda: AliasTaken(f"alias {alias!r} is taken")}


def _seal_key_code(key: ApiKey, key_code: str, keyring: KeyRing) -> None:
    key.key_code_ciphertext = keyring.encrypt(key_code, key_code_aad(key.id))
    key.key_code_masked = mask_secret(key_code)


def _fingerprint(data: ApiKeyCreate) -> bytes:
    return hashlib.sha256(
        orjson.dumps(data.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).digest()


def _idempotency_aad(idempotency_key: str) -> bytes:
    return idempotency_response_aad(idempotency_key)


def _replay(record: IdempotencyRecord, fingerprint: bytes, keyring: KeyRing) -> ApiKeyWithToken:
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    body = keyring.decrypt(record.response_sealed, _idempotency_aad(record.key))
    return ApiKeyWithToken.model_validate_json(body)


async def create_api_key(
    session: AsyncSession,
    data: ApiKeyCreate,
    *,
    keyring: KeyRing,
    hasher: TokenHasher,
    actor: str,
    idempotency_key: str | None = None,
) -> tuple[ApiKeyWithToken, bool]:
    """Create a key; returns ``(key with its token, replayed)``.

    With an ``Idempotency-Key`` the claim on the key is inserted first, so a
    concurrent retry waits for the first attempt and then replays its result.
    """
    repo = ApiKeyRepository(session)
    fingerprint = _fingerprint(data)
    record: IdempotencyRecord | None = None
    key_id = uuid.uuid4()
    if idempotency_key is not None:
        await repo.purge_idempotency(IDEMPOTENCY_TTL)
        existing = await repo.get_idempotency(idempotency_key)
        if existing is not None:
            return _replay(existing, fingerprint, keyring), True
        record = IdempotencyRecord(
            key=idempotency_key,
            fingerprint=fingerprint,
            status_code=201,
            response_sealed="",
            resource_id=key_id,
        )
        try:
            async with session.begin_nested():
                session.add(record)
                await session.flush()
        except IntegrityError:
            existing = await repo.get_idempotency(idempotency_key)
            if existing is None:  # the other attempt rolled back; let the client retry
                raise IdempotencyKeyReused(
                    "a concurrent request with this key failed; retry"
                ) from None
            return _replay(existing, fingerprint, keyring), True

    provider, model = await providers.resolve_model(session, data.provider, data.model)
    issued = hasher.issue()
    key = ApiKey(
        id=key_id,
        alias=data.alias,
        provider_id=provider.id,
        model_id=model.id,
        status=data.status,
        token_hash=issued.token_hash,
        token_prefix=issued.prefix,
        input_limit=data.input_limit,
        output_limit=data.output_limit,
        usage_limit=data.usage_limit,
        budget_tokens=data.budget_tokens,
        budget_period=data.budget_period,
        rpm_limit=data.rpm_limit,
        tpm_limit=data.tpm_limit,
    )
    _seal_key_code(key, data.key_code, keyring)
    session.add(key)
    await flush(session, _alias_taken(data.alias))
    key = await get_api_key(session, key_id)
    result = ApiKeyWithToken(**to_read(key).model_dump(), token=issued.token)
    if record is not None:
        record.response_sealed = keyring.encrypt(
            result.model_dump_json(), _idempotency_aad(record.key)
        )
    audit.record(session, actor, "create", "api_key", key.id, before=None, after=_snapshot(key))
    return result, False


async def get_api_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey:
    return await ApiKeyRepository(session).get_existing(key_id)


async def alias_of(session: AsyncSession, key_id: uuid.UUID) -> str | None:
    """The alias of the key with *key_id*, or None when there is no such key (any more)."""
    return await ApiKeyRepository(session).alias_of(key_id)


async def count_keys_of_provider(session: AsyncSession, provider_id: uuid.UUID) -> int:
    return await ApiKeyRepository(session).count_of_provider(provider_id)


async def models_in_use(session: AsyncSession, model_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of *model_ids* some key uses."""
    return await ApiKeyRepository(session).models_in_use(model_ids)


async def _conditions(session: AsyncSession, filters: KeyFilters) -> KeyConditions:
    provider_ids = model_ids = None
    if filters.provider:
        provider_id = await providers.provider_id_named(session, filters.provider)
        provider_ids = [] if provider_id is None else [provider_id]
    if filters.model:
        model_ids = await providers.model_ids_named(session, filters.model)
    return KeyConditions(
        q=filters.q,
        status=filters.status,
        usage_limit=filters.usage_limit,
        provider_ids=provider_ids,
        model_ids=model_ids,
    )


# A page of ``GET /apikeys`` is serialised straight from its rows (orjson), not
# through ``ApiKeyRead`` and ``ApiKeyPage``: validating 50 rows and dumping them
# again cost ~1 ms of the ~3 ms of CPU a search took (issue 15). The bytes are
# those ``ApiKeyPage.model_dump_json()`` gives (tests/apikeys/test_page_json.py):
# the fields in ``ApiKeyRead``'s order, UTC instants with ``Z`` (asyncpg gives
# every ``timestamptz`` in UTC), ``budget_resets_at`` (in the budget zone)
# written by pydantic itself.
_ITEM_FIELDS = tuple(ApiKeyRead.model_fields)
_BUDGET_FIELDS = ("budget_used", "budget_resets_at")
_BUDGET_AT = _ITEM_FIELDS.index(_BUDGET_FIELDS[0])
if _ITEM_FIELDS[_BUDGET_AT : _BUDGET_AT + 2] != _BUDGET_FIELDS:  # pragma: no cover
    raise RuntimeError("ApiKeyRead's budget fields must follow one another")
_ROW_POSITIONS = {
    name: i for i, name in enumerate(select(*search.PAGE_COLUMNS).selected_columns.keys())
}
_BEFORE_BUDGET = operator.itemgetter(*(_ROW_POSITIONS[f] for f in _ITEM_FIELDS[:_BUDGET_AT]))
_AFTER_BUDGET = operator.itemgetter(*(_ROW_POSITIONS[f] for f in _ITEM_FIELDS[_BUDGET_AT + 2 :]))
_DATETIME = TypeAdapter(datetime)


def _json_datetime(value: datetime) -> str:
    """*value* as pydantic writes it in JSON (orjson differs for offsets of seconds)."""
    return str(_DATETIME.dump_python(value, mode="json"))


def _json_default(value: object) -> str:
    """asyncpg's own ``UUID`` class (a ``uuid.UUID``, not one to orjson)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _item(row: Any) -> dict[str, Any]:
    """One row of :data:`search.PAGE_COLUMNS` as an item of the page (no budget used yet)."""
    return dict(
        zip(_ITEM_FIELDS, (*_BEFORE_BUDGET(row), 0, None, *_AFTER_BUDGET(row)), strict=True)
    )


@dataclass(slots=True)
class KeyPage:
    """A page of ``GET /apikeys``: what :class:`ApiKeyPage` holds, its items as
    dicts with ``ApiKeyRead``'s fields, in its order."""

    items: list[dict[str, Any]]
    next_cursor: str | None
    total: int

    def json(self) -> bytes:
        """The page as ``ApiKeyPage.model_dump_json()`` writes it."""
        page = {"items": self.items, "next_cursor": self.next_cursor, "total": self.total}
        return orjson.dumps(page, default=_json_default, option=orjson.OPT_UTC_Z)


async def search_api_keys(
    session: AsyncSession, filters: KeyFilters, *, sort: str, limit: int, cursor: str | None
) -> KeyPage:
    # Read only, statement by statement (under READ COMMITTED each statement has
    # its own snapshot anyway): no BEGIN and COMMIT round trips around them. The
    # count and the page run on the connection (Core), not through the ORM
    # session: its result handling cost ~0.2 ms of CPU a page (issue 15).
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    conditions = await _conditions(session, filters)
    after: tuple[object, uuid.UUID] | None = None
    if cursor:
        payload = decode_cursor(cursor, {"s", "v", "id"})
        if payload["s"] != sort:
            raise InvalidCursor("the cursor was made for another sort order")
        try:
            after = (_cursor_value(sort, payload["v"]), uuid.UUID(str(payload["id"])))
        except (TypeError, ValueError):
            raise InvalidCursor("malformed cursor") from None
    # The count first: the page uses it to choose how to find the matches.
    want = search.PageRequest(sort, after, limit + 1)
    found = await search.tally(connection, conditions, want)
    rows = await search.page(connection, conditions, found, sort=sort, after=after, limit=limit + 1)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor({"s": sort, "v": _sort_value(sort, last), "id": str(last.id)})
    return KeyPage(
        items=[_item(row) for row in rows[:limit]], next_cursor=next_cursor, total=found.matches
    )


def _sort_value(sort: str, row: Any) -> str:
    """The cursor's value: for ``alias``, PostgreSQL's own lower-casing (the order's)."""
    field = sort.lstrip("-")
    if field == "alias":
        return str(row.alias_lower)
    value = row.created_at if field == "created_at" else row.updated_at
    return str(value.isoformat())


def _cursor_value(sort: str, value: object) -> object:
    if not isinstance(value, str):
        raise TypeError
    if sort.lstrip("-") == "alias":
        return value
    return utc_instant(datetime.fromisoformat(value))


async def update_api_key(
    session: AsyncSession,
    key_id: uuid.UUID,
    data: ApiKeyUpdate,
    *,
    if_match: int | None,
    keyring: KeyRing,
    actor: str,
    budget_zone: str = "UTC",
    counters: RedisBudgetStore | None = None,
) -> ApiKey:
    key = await ApiKeyRepository(session).get_to_change(key_id, if_match)
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return key
    before = _snapshot(key)
    if "provider" in changes or "model" in changes:
        provider, model = await providers.resolve_model(
            session, data.provider or key.provider.name, data.model or key.model.name
        )
        key.provider_id, key.model_id = provider.id, model.id
    for field in (
        "alias",
        "status",
        "input_limit",
        "output_limit",
        "usage_limit",
        "budget_tokens",
        "budget_period",
        "rpm_limit",
        "tpm_limit",
    ):
        if field in changes:
            setattr(key, field, changes[field])
    secret_replaced = data.key_code is not None
    if data.key_code is not None:
        _seal_key_code(key, data.key_code, keyring)
    key.version += 1
    key.updated_at = func.now()
    await flush(session, _alias_taken(data.alias))
    if budgets.needs_recount(before, changes):  # docs/budgets.md, "Changing the period"
        await budgets.recount(session, key.id, key.budget_period, ZoneInfo(budget_zone), counters)
    # The repository loads with populate_existing: server-side timestamps are fresh.
    key = await get_api_key(session, key_id)
    after = _snapshot(key)
    field_changes = set(changes) - {"key_code"}
    if field_changes:
        audit.record(session, actor, "update", "api_key", key.id, before=before, after=after)
    if secret_replaced:
        audit.record(
            session,
            actor,
            "secret_replaced",
            "api_key",
            key.id,
            before={"key_code_masked": before["key_code_masked"]},
            after={"key_code_masked": after["key_code_masked"]},
        )
    return key


async def rotate_token(
    session: AsyncSession,
    key_id: uuid.UUID,
    *,
    if_match: int | None,
    hasher: TokenHasher,
    actor: str,
) -> ApiKeyWithToken:
    key = await ApiKeyRepository(session).get_to_change(key_id, if_match)
    before = {"token_prefix": key.token_prefix}
    issued = hasher.issue()
    key.token_hash = issued.token_hash
    key.token_prefix = issued.prefix
    key.version += 1
    key.updated_at = func.now()
    await session.flush()
    # The repository loads with populate_existing: server-side timestamps are fresh.
    key = await get_api_key(session, key_id)
    audit.record(
        session,
        actor,
        "token_rotated",
        "api_key",
        key.id,
        before=before,
        after={"token_prefix": key.token_prefix},
    )
    return ApiKeyWithToken(**to_read(key).model_dump(), token=issued.token)


async def delete_api_key(
    session: AsyncSession, key_id: uuid.UUID, *, if_match: int | None, actor: str
) -> None:
    key = await ApiKeyRepository(session).get_to_change(key_id, if_match)
    before = _snapshot(key)
    await session.delete(key)
    await session.flush()
    audit.record(session, actor, "delete", "api_key", key_id, before=before, after=None)

"""Client token → AI API key, in memory, kept fresh by PostgreSQL LISTEN/NOTIFY.

Every key is loaded at start with its provider and model, its key code opened
once, and indexed by the hash of its client token, so resolving a request is
one HMAC and one dict lookup: no query per request.

Freshness: database triggers NOTIFY on every committed change, whoever made it
(any gateway process, the CLI, plain SQL), as :mod:`aigw.db.notify` contracts. A dedicated asyncpg connection LISTENs; one
worker task applies the changes in order, re-reading just the affected rows
(a burst, or a provider change, is one full reload). LISTEN starts before the
initial load, so no change can fall between the two.

When the LISTEN connection is lost, the cache keeps serving what it has and
reconnects with backoff; once back it reloads everything, since notifications
sent meanwhile are gone. A heartbeat query catches a connection that died
without closing (a silent network drop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aigw.apikeys.models import ApiKey
from aigw.budgets.rules import KeyBudget
from aigw.crypto import CryptoError, KeyRing, key_code_aad
from aigw.db import notify
from aigw.netpolicy import UpstreamRefused, check_upstream_url
from aigw.providers.models import Provider, ProviderModel
from aigw.proxy.policy import Limits

log = logging.getLogger("aigw.proxy.keycache")

# More pending changes than this are cheaper as one full reload.
_BATCH_RELOAD_THRESHOLD = 200


@dataclass(frozen=True, slots=True)
class ResolvedKey:
    """Everything a proxied request needs to know about its key; immutable, so a
    request keeps a consistent view even if the key changes mid-stream."""

    id: uuid.UUID
    alias: str
    enabled: bool
    provider_id: uuid.UUID
    provider_name: str
    provider_kind: str
    base_url: str
    model: str
    encoding: str
    limits: Limits
    # The decrypted upstream secret; None when the key ring cannot open it.
    key_code: str | None = field(repr=False)
    # Precomputed response headers: x-aigw-input-limit, -output-limit, -usage-limit.
    limit_headers: tuple[tuple[bytes, bytes], ...] = field(repr=False, compare=False)
    # The network policy judged once at load: a literal address in base_url never
    # reaches the connect-time resolver check (aiohttp skips resolving literals),
    # and the operator may have tightened AIGW_ALLOW_PRIVATE_UPSTREAMS since the
    # provider was written.
    upstream_allowed: bool = True
    # Budget and rates (aigw.budgets); None: neither, and nothing to check per request.
    budget: KeyBudget | None = None
    # Provider settings some kinds take (aigw.providers.schemas.ProviderSettings).
    api_version: str | None = None
    deployment: str | None = None  # azure_openai: the model's deployment
    input_counting: str = "tiktoken"
    counting_margin: int = 10


def _policy_allows(base_url: str, allow_private: bool) -> bool:
    try:
        check_upstream_url(base_url, allow_private=allow_private)
    except UpstreamRefused:
        return False
    return True


def _resolved(row: Any, key_code: str | None, allow_private: bool) -> ResolvedKey:
    limits = Limits(row.input_limit, row.output_limit, row.usage_limit)
    return ResolvedKey(
        id=row.id,
        alias=row.alias,
        enabled=row.status == "enabled",
        provider_id=row.provider_id,
        provider_name=row.provider_name,
        provider_kind=row.provider_kind,
        base_url=row.base_url,
        model=row.model_name,
        encoding=row.encoding,
        limits=limits,
        key_code=key_code,
        limit_headers=(
            (b"x-aigw-input-limit", str(limits.input_limit).encode()),
            (b"x-aigw-output-limit", str(limits.output_limit).encode()),
            (b"x-aigw-usage-limit", limits.usage_limit.encode()),
        ),
        upstream_allowed=_policy_allows(row.base_url, allow_private),
        budget=KeyBudget.of(row.budget_tokens, row.budget_period, row.rpm_limit, row.tpm_limit),
        api_version=row.api_version,
        deployment=row.deployment,
        input_counting=row.input_counting,
        counting_margin=row.counting_margin,
    )


def _key_rows() -> Select:
    return (
        select(
            ApiKey.id,
            ApiKey.alias,
            ApiKey.status,
            ApiKey.token_hash,
            ApiKey.key_code_ciphertext,
            ApiKey.input_limit,
            ApiKey.output_limit,
            ApiKey.usage_limit,
            ApiKey.budget_tokens,
            ApiKey.budget_period,
            ApiKey.rpm_limit,
            ApiKey.tpm_limit,
            ApiKey.provider_id,
            Provider.name.label("provider_name"),
            Provider.kind.label("provider_kind"),
            Provider.base_url,
            ProviderModel.name.label("model_name"),
            ProviderModel.encoding,
            Provider.api_version,
            Provider.input_counting,
            Provider.counting_margin,
            ProviderModel.deployment,
        )
        .join(Provider, Provider.id == ApiKey.provider_id)
        .join(ProviderModel, ProviderModel.id == ApiKey.model_id)
    )


class KeyCache:
    """Resolve client-token hashes to :class:`ResolvedKey`; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        keyring: KeyRing,
        listen_dsn: str,
        *,
        allow_private_upstreams: bool = True,
        heartbeat_interval: float = 5.0,
        max_backoff: float = 5.0,
        prepare: Callable[[set[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = engine
        # Awaited with the encodings of keys about to be served, before they are:
        # a request never waits for its encoding to load.
        self._prepare = prepare
        self._allow_private = allow_private_upstreams
        self._keyring = keyring
        self._listen_dsn = listen_dsn
        self._heartbeat_interval = heartbeat_interval
        self._max_backoff = max_backoff
        self._by_hash: dict[bytes, ResolvedKey] = {}
        self._hash_by_id: dict[uuid.UUID, bytes] = {}
        self._opened: dict[tuple[uuid.UUID, str], str | None] = {}
        self._pending: asyncio.Queue[str | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.listening = False
        self._closing = False
        self.reloads = 0

    def __repr__(self) -> str:
        return f"KeyCache(keys={len(self._by_hash)}, listening={self.listening})"

    def _decrypt_key_code(
        self, row: Any, into: dict[tuple[uuid.UUID, str], str | None]
    ) -> str | None:
        """The key code of *row*, opened once per ciphertext (a reload re-opens nothing
        unchanged, and a code the ring cannot open is logged once, not per reload)."""
        memo = (row.id, row.key_code_ciphertext)
        if memo in self._opened:
            into[memo] = self._opened[memo]
            return into[memo]
        try:
            key_code: str | None = self._keyring.decrypt(
                row.key_code_ciphertext, key_code_aad(row.id)
            )
        except CryptoError as exc:
            # The id and the reason only; never ciphertext or plaintext.
            log.error("cannot open the key code of AI API key %s: %s", row.id, type(exc).__name__)
            key_code = None
        into[memo] = key_code
        return key_code

    def get(self, token_hash: bytes) -> ResolvedKey | None:
        return self._by_hash.get(token_hash)

    def encodings_in_use(self) -> set[str]:
        return {key.encoding for key in self._by_hash.values()}

    def __len__(self) -> int:
        return len(self._by_hash)

    async def _fetch(self, ids: Iterable[uuid.UUID] | None = None) -> list[Any]:
        statement = _key_rows()
        if ids is not None:
            statement = statement.where(ApiKey.id.in_(list(ids)))
        async with self._engine.connect() as connection:
            return list((await connection.execute(statement)).all())

    async def reload_all(self) -> None:
        rows = await self._fetch()
        by_hash: dict[bytes, ResolvedKey] = {}
        hash_by_id: dict[uuid.UUID, bytes] = {}
        opened: dict[tuple[uuid.UUID, str], str | None] = {}
        for row in rows:
            by_hash[bytes(row.token_hash)] = _resolved(
                row, self._decrypt_key_code(row, opened), self._allow_private
            )
            hash_by_id[row.id] = bytes(row.token_hash)
        await self._prepared(by_hash.values())
        # No await between these: requests never see a half state.
        self._by_hash, self._hash_by_id, self._opened = by_hash, hash_by_id, opened
        self.reloads += 1
        log.info("key cache loaded %d keys", len(by_hash))

    async def reload_keys(self, ids: set[uuid.UUID]) -> None:
        rows = await self._fetch(ids)
        found = {
            row.id: (
                bytes(row.token_hash),
                _resolved(row, self._decrypt_key_code(row, self._opened), self._allow_private),
            )
            for row in rows
        }
        await self._prepared(resolved for _, resolved in found.values())
        for key_id in ids:
            old_hash = self._hash_by_id.pop(key_id, None)
            if old_hash is not None:
                self._by_hash.pop(old_hash, None)
            loaded = found.get(key_id)
            if loaded is not None:  # absent: the key was deleted
                token_hash, resolved = loaded
                self._by_hash[token_hash] = resolved
                self._hash_by_id[key_id] = token_hash

    async def _prepared(self, keys: Iterable[ResolvedKey]) -> None:
        if self._prepare is None:
            return
        try:
            await self._prepare({key.encoding for key in keys})
        except Exception:  # the request's own load reports it; the keys must still load
            log.exception("preparing the encodings of the keys failed")

    async def _apply(self, payloads: list[str]) -> None:
        key_ids: set[uuid.UUID] = set()
        full = len(payloads) > _BATCH_RELOAD_THRESHOLD
        for payload in payloads:
            change = notify.parse_payload(payload)
            if change is not None and change.table == "api_keys":
                key_ids.add(change.id)
            else:  # a provider or its models (rare, and touches many keys), or unknown
                full = True
        if full:
            await self.reload_all()
        elif key_ids:
            await self.reload_keys(key_ids)

    async def start(self) -> None:
        """Connect LISTEN and load every key; a database that is down at start is an
        error here (the gateway cannot serve without its keys)."""
        connection = await self._listen()
        await self.reload_all()
        self._task = asyncio.create_task(self._run(connection), name="aigw-keycache")

    async def aclose(self) -> None:
        self._closing = True
        self._pending.put_nowait(None)
        if self._task is not None:
            # A database driver may turn a cancellation into its own error; the
            # closing flag makes the worker stop either way.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)
            self._task = None

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self._pending.put_nowait(payload)

    def _on_terminated(self, _connection: Any) -> None:
        self._pending.put_nowait(None)

    async def _listen(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            self._listen_dsn,
            timeout=10,
            server_settings={"application_name": "aigw-keycache"},
        )
        try:
            await connection.add_listener(notify.CHANNEL, self._on_notify)
            # Wake the worker at once when the connection dies, not at the next heartbeat.
            connection.add_termination_listener(self._on_terminated)
        except BaseException:
            await connection.close()
            raise
        self.listening = True
        return connection

    async def _run(self, connection: asyncpg.Connection | None) -> None:
        backoff = 0.1
        while not self._closing:
            if connection is None:
                try:
                    connection = await self._listen()
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    log.warning(
                        "key cache LISTEN reconnect failed (%s); retrying in %.1fs",
                        type(exc).__name__,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                # Notifications sent while we were away are lost: start over.
                self._drain()
                try:
                    await self.reload_all()
                except Exception as exc:
                    log.warning("key cache reload failed (%s)", type(exc).__name__)
                    await self._close_quietly(connection)
                    connection = None
                    continue
                log.info("key cache LISTEN re-established")
            backoff = 0.1
            try:
                await self._serve(connection)
            except asyncio.CancelledError:
                await self._close_quietly(connection)
                raise
            except Exception as exc:
                if not self._closing:
                    log.warning("key cache LISTEN connection lost (%s)", type(exc).__name__)
            self.listening = False
            await self._close_quietly(connection)
            connection = None
        if connection is not None:
            await self._close_quietly(connection)

    def _drain(self) -> None:
        while not self._pending.empty():
            self._pending.get_nowait()

    async def _serve(self, connection: asyncpg.Connection) -> None:
        """Apply notifications until the connection fails or the cache closes."""
        while not self._closing:
            try:
                first = await asyncio.wait_for(self._pending.get(), self._heartbeat_interval)
            except TimeoutError:
                if connection.is_closed():
                    raise ConnectionError("LISTEN connection closed") from None
                await connection.fetchval("SELECT 1", timeout=self._heartbeat_interval)
                continue
            payloads = [first] if first is not None else []
            while not self._pending.empty():
                item = self._pending.get_nowait()
                if item is not None:
                    payloads.append(item)
            if payloads:
                await self._apply(payloads)
            if connection.is_closed():
                raise ConnectionError("LISTEN connection closed")

    @staticmethod
    async def _close_quietly(connection: asyncpg.Connection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 2.0)

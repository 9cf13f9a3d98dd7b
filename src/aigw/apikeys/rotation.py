"""Re-seal every stored key code under the key ring's primary key.

Runs in small batches, each its own transaction, choosing rows whose
ciphertext names another key id: interrupted at any point, it resumes where it
stopped, and gateways keep serving throughout (every key id stays readable).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aigw.apikeys.models import ApiKey, IdempotencyRecord
from aigw.crypto import KeyRing, idempotency_response_aad, key_code_aad

log = logging.getLogger("aigw.rotation")


def _kid_column() -> ColumnElement[str]:
    return func.split_part(ApiKey.key_code_ciphertext, text("'.'"), 2)


async def count_stale(sessionmaker: async_sessionmaker[AsyncSession], keyring: KeyRing) -> int:
    async with sessionmaker() as session:
        stmt = select(func.count()).select_from(ApiKey).where(_kid_column() != keyring.primary_kid)
        return int(await session.scalar(stmt) or 0)


async def reencrypt_key_codes(
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    *,
    batch_size: int = 100,
    wait_for_others: float = 30.0,
) -> int:
    """Returns how many rows this run re-sealed.

    Batches take their rows ``FOR UPDATE SKIP LOCKED``, so concurrent runs share
    the work; a run that finds only rows locked by another waits (up to
    *wait_for_others* seconds without progress) until those are committed.
    """
    done = 0
    give_up_at = asyncio.get_running_loop().time() + wait_for_others
    while True:
        async with sessionmaker() as session, session.begin():
            rows = (
                await session.execute(
                    select(ApiKey.id, ApiKey.key_code_ciphertext)
                    .where(_kid_column() != keyring.primary_kid)
                    .order_by(ApiKey.id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                # Rows another run holds locked are still stale until it commits:
                # wait for them rather than report "done" (or "left") too early.
                if await count_stale(sessionmaker, keyring) == 0:
                    return done
                if asyncio.get_running_loop().time() > give_up_at:
                    return done
                await asyncio.sleep(0.2)
                continue
            give_up_at = asyncio.get_running_loop().time() + wait_for_others
            for row_id, ciphertext in rows:
                aad = key_code_aad(row_id)
                resealed = keyring.encrypt(keyring.decrypt(ciphertext, aad), aad)
                await session.execute(
                    update(ApiKey).where(ApiKey.id == row_id).values(key_code_ciphertext=resealed)
                )
            done += len(rows)
            log.info("re-encrypted %d key codes so far", done)


def _stale_responses(keyring: KeyRing) -> ColumnElement[bool]:
    kid = func.split_part(IdempotencyRecord.response_sealed, text("'.'"), 2)
    # An empty response is a claim whose request is still running: nothing sealed yet.
    return (kid != keyring.primary_kid) & (IdempotencyRecord.response_sealed != "")


async def count_stale_responses(
    sessionmaker: async_sessionmaker[AsyncSession], keyring: KeyRing
) -> int:
    async with sessionmaker() as session:
        stmt = select(func.count()).select_from(IdempotencyRecord).where(_stale_responses(keyring))
        return int(await session.scalar(stmt) or 0)


async def reseal_idempotent_responses(
    sessionmaker: async_sessionmaker[AsyncSession], keyring: KeyRing, *, batch_size: int = 100
) -> int:
    """Re-seal the stored responses of ``Idempotency-Key`` creates (they hold a client
    token, sealed by the same key ring) so a retry within their 24 h still replays
    after the old key is dropped. Returns how many were re-sealed."""
    done = 0
    while True:
        async with sessionmaker() as session, session.begin():
            rows = (
                await session.execute(
                    select(IdempotencyRecord.key, IdempotencyRecord.response_sealed)
                    .where(_stale_responses(keyring))
                    .order_by(IdempotencyRecord.key)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return done
            for key, sealed in rows:
                aad = idempotency_response_aad(key)
                await session.execute(
                    update(IdempotencyRecord)
                    .where(IdempotencyRecord.key == key)
                    .values(response_sealed=keyring.encrypt(keyring.decrypt(sealed, aad), aad))
                )
            done += len(rows)

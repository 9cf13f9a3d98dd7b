"""Start-up check: the configured key ring must open what is stored.

A gateway started with the wrong encryption key would otherwise run and fail
on every proxied request; refusing to start says what is wrong at once.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aigw.apikeys.models import ApiKey
from aigw.crypto import CryptoError, KeyRing, key_code_aad


class KeyRingMismatch(RuntimeError):
    """The configured encryption keys cannot open the stored secrets."""


async def verify_keyring_opens_stored_secrets(
    sessionmaker: async_sessionmaker[AsyncSession], keyring: KeyRing
) -> None:
    kid = func.split_part(ApiKey.key_code_ciphertext, text("'.'"), 2)
    async with sessionmaker() as session:
        # One sample row per key id in use.
        rows = (
            await session.execute(
                select(ApiKey.id, ApiKey.key_code_ciphertext).distinct(kid).order_by(kid, ApiKey.id)
            )
        ).all()
    for row_id, ciphertext in rows:
        try:
            keyring.decrypt(ciphertext, key_code_aad(row_id))
        except CryptoError as exc:
            raise KeyRingMismatch(
                f"AIGW_ENCRYPTION_KEYS cannot open stored key codes ({exc}); "
                "configure the key ring the data was written with"
            ) from None

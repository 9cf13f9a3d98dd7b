"""Secrets at rest: sealing, row binding, key rings, masking, client tokens."""

from __future__ import annotations

import base64
import secrets
import uuid

import asyncpg
import httpx
import pytest

from aigw.crypto import (
    DecryptionFailed,
    KeyRing,
    KeyRingConfigError,
    TokenHasher,
    UnknownKeyId,
    key_code_aad,
    mask_secret,
)
from tests.conftest import ENCRYPTION_KEYS, key_body


def ring(*kids: str) -> KeyRing:
    return KeyRing.parse(
        ",".join(f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}" for kid in kids)
    )


def test_sealed_value_names_its_key_and_opens_only_with_its_row() -> None:
    keyring = ring("a")
    row, other = uuid.uuid4(), uuid.uuid4()
    sealed = keyring.encrypt("sk-secret", key_code_aad(row))
    assert sealed.startswith("v1.a.")
    assert "sk-secret" not in sealed
    assert keyring.decrypt(sealed, key_code_aad(row)) == "sk-secret"
    with pytest.raises(DecryptionFailed):
        keyring.decrypt(sealed, key_code_aad(other))


def test_every_flipped_character_is_detected() -> None:
    keyring = ring("a")
    aad = key_code_aad(uuid.uuid4())
    sealed = keyring.encrypt("sk-secret", aad)
    body_start = len("v1.a.")
    for index in range(body_start, len(sealed)):
        flipped = "B" if sealed[index] != "B" else "C"
        with pytest.raises(DecryptionFailed):
            keyring.decrypt(sealed[:index] + flipped + sealed[index + 1 :], aad)


def test_key_ring_seals_with_first_and_opens_with_any() -> None:
    old = ring("old")
    aad = key_code_aad(uuid.uuid4())
    sealed_old = old.encrypt("value", aad)
    new_spec = f"new:{base64.b64encode(secrets.token_bytes(32)).decode()}"
    both = KeyRing.parse(
        new_spec + "," + ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in old.keys)
    )
    assert both.decrypt(sealed_old, aad) == "value"
    assert both.encrypt("value", aad).startswith("v1.new.")
    with pytest.raises(UnknownKeyId):
        ring("other").decrypt(sealed_old, aad)


@pytest.mark.parametrize(
    "spec",
    ["", "nokid", "a:not-base64!!", "a:" + base64.b64encode(b"short").decode(), "a b:" + "A" * 44],
)
def test_bad_key_ring_configuration_is_refused_without_echoing_keys(spec: str) -> None:
    with pytest.raises(KeyRingConfigError) as info:
        KeyRing.parse(spec)
    if ":" in spec:
        assert spec.split(":", 1)[1] not in str(info.value) or not spec.split(":", 1)[1]


def test_repr_hides_key_material() -> None:
    keyring = ring("a")
    assert base64.b64encode(keyring.keys[0][1]).decode() not in repr(keyring)
    assert "pepper" in repr(TokenHasher("p" * 32)) and "p" * 32 not in repr(TokenHasher("p" * 32))


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("sk-proj-abcdefghijklmnop9aZ", "sk-p…p9aZ"),
        ("12345678", "12…78"),
        ("1234567", "1…7"),
        ("abc", "…"),
        ("", "…"),
    ],
)
def test_masking_never_shows_more_than_four_each_side(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked


def test_client_tokens_have_256_random_bits_and_peppered_hashes() -> None:
    hasher = TokenHasher("pepper-" + "x" * 20)
    issued = {hasher.issue().token for _ in range(1000)}
    assert len(issued) == 1000
    token = next(iter(issued))
    assert token.startswith("aigw-")
    assert len(base64.urlsafe_b64decode(token[5:] + "=")) == 32
    assert hasher.hash(token) != TokenHasher("pepper-" + "y" * 20).hash(token)
    assert len(hasher.hash(token)) == 32


async def test_ciphertext_copied_to_another_row_fails_to_decrypt(
    client: httpx.AsyncClient, provider: dict, db: str
) -> None:
    first = (await client.post("/apikeys", json=key_body(alias="one"))).json()
    second = (await client.post("/apikeys", json=key_body(alias="two"))).json()
    conn = await asyncpg.connect(db)
    try:
        stolen = await conn.fetchval(
            "SELECT key_code_ciphertext FROM api_keys WHERE id = $1", uuid.UUID(first["id"])
        )
        await conn.execute(
            "UPDATE api_keys SET key_code_ciphertext = $1 WHERE id = $2",
            stolen,
            uuid.UUID(second["id"]),
        )
    finally:
        await conn.close()
    keyring = KeyRing.parse(ENCRYPTION_KEYS)
    assert keyring.decrypt(stolen, key_code_aad(first["id"])).startswith("sk-test-")
    with pytest.raises(DecryptionFailed):
        keyring.decrypt(stolen, key_code_aad(second["id"]))


async def test_rotate_keys_reseals_every_row_under_the_new_primary(
    client: httpx.AsyncClient, provider: dict, db: str
) -> None:
    from aigw.apikeys.rotation import count_stale, reencrypt_key_codes
    from aigw.config import Settings
    from aigw.db.engine import create_engine, create_sessionmaker

    codes = {}
    for index in range(7):
        body = key_body(alias=f"k{index}")
        codes[(await client.post("/apikeys", json=body)).json()["id"]] = body["key_code"]
    new_ring = KeyRing.parse(
        f"k2:{base64.b64encode(secrets.token_bytes(32)).decode()},{ENCRYPTION_KEYS}"
    )
    engine = create_engine(Settings(database_url=db))
    try:
        sessionmaker = create_sessionmaker(engine)
        assert await count_stale(sessionmaker, new_ring) == 7
        assert await reencrypt_key_codes(sessionmaker, new_ring, batch_size=3) == 7
        assert await count_stale(sessionmaker, new_ring) == 0
        assert await reencrypt_key_codes(sessionmaker, new_ring) == 0  # resumable: nothing left
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch("SELECT id, key_code_ciphertext FROM api_keys")
    finally:
        await conn.close()
    for row in rows:
        assert row["key_code_ciphertext"].startswith("v1.k2.")
        assert (
            new_ring.decrypt(row["key_code_ciphertext"], key_code_aad(row["id"]))
            == codes[str(row["id"])]
        )

"""Secrets at rest and client tokens.

Upstream key codes are sealed with AES-256-GCM in a versioned text format,
``v1.<kid>.<base64url(nonce || ciphertext || tag)>``, whose associated data
binds each ciphertext to the row and column it belongs to: a ciphertext copied
to another row fails to open. A :class:`KeyRing` holds several keys; the first
seals, every one opens, so the encryption key can be rotated without downtime
and ``aigw rotate-keys`` re-seals old rows under the newest key.

Client tokens are ``aigw-`` followed by 256 random bits; only their
HMAC-SHA256 under a server pepper is stored.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = "v1"
TOKEN_PREFIX = "aigw-"  # noqa: S105 - the public prefix of client tokens
_TOKEN_PREFIX_SHOWN = len(TOKEN_PREFIX) + 8
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class CryptoError(Exception):
    """Base of every failure here. Messages never contain secret material."""


class KeyRingConfigError(CryptoError):
    """The configured encryption keys are malformed."""


class UnknownKeyId(CryptoError):
    """A ciphertext names a key id the ring does not hold."""


class DecryptionFailed(CryptoError):
    """A ciphertext was tampered with, moved to another row, or the key is wrong."""


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Ordered AES-256 keys by id; ``keys[0]`` seals, all open."""

    keys: tuple[tuple[str, bytes], ...]
    _ciphers: dict[str, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingConfigError("at least one encryption key is required")
        ciphers: dict[str, AESGCM] = {}
        for kid, key in self.keys:
            if not _KID_RE.match(kid):
                raise KeyRingConfigError(f"invalid key id {kid!r}: use 1-32 of [A-Za-z0-9_-]")
            if len(key) != 32:
                raise KeyRingConfigError(f"key {kid!r} must be 32 bytes (AES-256)")
            if kid in ciphers:
                raise KeyRingConfigError(f"duplicate key id {kid!r}")
            ciphers[kid] = AESGCM(key)
        object.__setattr__(self, "_ciphers", ciphers)

    def __repr__(self) -> str:
        return f"KeyRing(kids={[kid for kid, _ in self.keys]!r})"

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Parse ``kid:base64key[,kid:base64key…]``; never echoes key material."""
        entries: list[tuple[str, bytes]] = []
        for index, raw in enumerate(part.strip() for part in spec.split(",")):
            if not raw:
                continue
            kid, sep, encoded = raw.partition(":")
            if not sep:
                raise KeyRingConfigError(f"encryption key #{index + 1} is not 'kid:base64key'")
            try:
                key = _b64decode(encoded.strip())
            except (binascii.Error, ValueError):
                raise KeyRingConfigError(f"encryption key {kid!r} is not valid base64") from None
            entries.append((kid.strip(), key))
        return cls(tuple(entries))

    @property
    def primary_kid(self) -> str:
        return self.keys[0][0]

    def encrypt(self, plaintext: str, aad: bytes) -> str:
        kid = self.primary_kid
        nonce = secrets.token_bytes(12)
        sealed = self._ciphers[kid].encrypt(nonce, plaintext.encode("utf-8"), aad)
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{FORMAT_VERSION}.{kid}.{body}"

    def decrypt(self, token: str, aad: bytes) -> str:
        """Open a sealed value or raise: a failure is never a silent ``None``."""
        _version, kid, body = self.parse_header(token)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise UnknownKeyId(f"ciphertext sealed with key id {kid!r}, which is not configured")
        try:
            raw = _b64decode(body)
            # Only the canonical spelling opens: base64 leaves spare bits in the
            # last character, and a ciphertext must not have two spellings.
            if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != body:
                raise ValueError("non-canonical encoding")
            plaintext = cipher.decrypt(raw[:12], raw[12:], aad)
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptionFailed(
                f"ciphertext under key id {kid!r} failed authentication"
            ) from None
        return plaintext.decode("utf-8")

    @staticmethod
    def parse_header(token: str) -> tuple[str, str, str]:
        version, _, rest = token.partition(".")
        kid, _, body = rest.partition(".")
        if version != FORMAT_VERSION or not kid or not body:
            raise DecryptionFailed("ciphertext has an unknown format")
        return version, kid, body


def key_code_aad(api_key_id: object) -> bytes:
    """Associated data binding a key code ciphertext to its row."""
    return f"aigw/api_keys/{api_key_id}/key_code".encode()


def idempotency_response_aad(idempotency_key: str) -> bytes:
    """Associated data binding a stored ``POST /apikeys`` response to its Idempotency-Key."""
    return f"aigw/idempotency_records/{idempotency_key}/response".encode()


def mask_secret(value: str) -> str:
    """Show at most the first and last 4 characters, fewer for short secrets."""
    shown = min(4, len(value) // 4)
    if shown == 0:
        return "…"
    return f"{value[:shown]}…{value[-shown:]}"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str = field(repr=False)
    token_hash: bytes = field(repr=False)
    prefix: str


class TokenHasher:
    """Issues client tokens and hashes them with a server-side pepper."""

    __slots__ = ("_pepper",)

    def __init__(self, pepper: str) -> None:
        self._pepper = pepper.encode("utf-8")

    def __repr__(self) -> str:
        return "TokenHasher(pepper=***)"

    def hash(self, token: str) -> bytes:
        # hmac.digest: the same HMAC-SHA256 in one C call (hmac.new builds a Python
        # object and two hash copies; issue 15, once per proxied request).
        return hmac.digest(self._pepper, token.encode("utf-8", "surrogatepass"), "sha256")

    def issue(self) -> IssuedToken:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return IssuedToken(
            token=token, token_hash=self.hash(token), prefix=token[:_TOKEN_PREFIX_SHOWN]
        )


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )

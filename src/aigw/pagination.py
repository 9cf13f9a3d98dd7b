"""Opaque keyset cursors: ``base64url(json)`` naming the sort and the last row seen."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from aigw.errors import ValidationFailed


class InvalidCursor(ValidationFailed):
    code = "invalid_cursor"
    title = "The cursor is not valid for this query"


def encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, expected_keys: set[str]) -> dict[str, Any]:
    try:
        # Strict: a character outside the alphabet is an error, not skipped.
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        payload = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidCursor(errors=[{"field": "cursor", "message": "malformed cursor"}]) from None
    if not isinstance(payload, dict) or set(payload) != expected_keys:
        raise InvalidCursor(errors=[{"field": "cursor", "message": "malformed cursor"}])
    # Cursors come back from clients: a value the database cannot take (U+0000 in
    # text, an integer beyond bigint) must fail here, not as a driver error.
    for value in payload.values():
        if (isinstance(value, str) and "\x00" in value) or (
            isinstance(value, int) and not -(2**63) <= value < 2**63
        ):
            raise InvalidCursor(errors=[{"field": "cursor", "message": "malformed cursor"}])
    return payload

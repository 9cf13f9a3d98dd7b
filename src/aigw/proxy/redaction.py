"""Keeping a key code out of what an upstream says back.

Some upstreams repeat the API key they were sent in an error (a body, a
header, an error event), and not always verbatim: JSON escapes (``\\/``,
``\\u002b``), percent-encoding or HTML entities spell the same key with other
bytes. The client holds a gateway token, not that secret, so before anything an
upstream said reaches a client:

- a JSON body is decoded, every string in it (keys too) redacted, and the body
  re-encoded (orjson never writes those escapes);
- any other text is redacted as text;
- a string holding the key verbatim gets it masked in place
  (:func:`aigw.crypto.mask_secret`); a string in which only a *decoded* form
  (percent, HTML entities, JSON escapes, up to :data:`_DEPTH` layers) holds it
  is withheld whole, since its encoded spelling cannot be masked in place.

Redaction always runs on the whole text, before anything cuts it to length, so
a cut can never leave a partial key unmasked.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import orjson

from aigw.crypto import mask_secret

WITHHELD = "[withheld by the gateway: it quoted the key code]"
_DEPTH = 3
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\([\"\\/bfnrt])")
_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _json_unescape(text: str) -> str:
    if "\\" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return chr(int(match.group(1), 16))
        char = match.group(2)
        return _SIMPLE.get(char, char)

    return _JSON_ESCAPE.sub(one, text)


def _percent(text: str) -> str:
    return unquote(text) if "%" in text else text


def _entities(text: str) -> str:
    return html.unescape(text) if "&" in text else text


_DECODERS: tuple[Callable[[str], str], ...] = (_json_unescape, _percent, _entities)


def quotes_secret(text: str, secret: str) -> bool:
    """Whether *text*, or any decoding of it up to :data:`_DEPTH` layers, holds *secret*."""
    forms = {text}
    for _ in range(_DEPTH):
        new = set()
        for form in forms:
            if secret in form:
                return True
            for decode in _DECODERS:
                decoded = decode(form)
                if decoded != form:
                    new.add(decoded)
        if not new:
            return False
        forms = new
    return any(secret in form for form in forms)


def redact_text(text: str, secret: str) -> str:
    """*text* with *secret* masked, or :data:`WITHHELD` when only a decoded form of
    *text* holds it."""
    if not secret:
        return text
    if secret in text:
        text = text.replace(secret, mask_secret(secret))
    if quotes_secret(text, secret):
        return WITHHELD
    return text


def _redact_value(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return redact_text(value, secret)
    if isinstance(value, list):
        return [_redact_value(item, secret) for item in value]
    if isinstance(value, dict):
        return {
            redact_text(name, secret): _redact_value(item, secret) for name, item in value.items()
        }
    return value


def redact_body(body: bytes, secret: str | None) -> bytes:
    """An upstream body with no decoded form of *secret* left in it."""
    if not secret or not body:
        return body
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
        redacted = redact_text(text, secret)
        return redacted.encode() if redacted != text else body
    redacted_value = _redact_value(parsed, secret)
    if redacted_value == parsed and secret.encode() not in body:
        return body
    return orjson.dumps(redacted_value)


def redact_any(value: Any, secret: str | None) -> Any:
    """*value* (a decoded JSON value) with no decoded form of *secret* left in it."""
    return _redact_value(value, secret) if secret else value

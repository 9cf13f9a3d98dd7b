"""A bound on a request's input tokens read from its size alone, in O(1)
Python steps (two ``bytes`` scans in C).

Every rule of :mod:`aigw.proxy.counting.prompt` costs at most three tokens per
byte of the request's JSON (a token covers at least one byte of text; the
fixed costs of a message, a name, a tool call or the parallel-call wrapper
each come with more JSON bytes than a third of their tokens; results of
parallel calls re-escaped as ``\\uXXXX`` stay under three tokens per source
byte), plus a constant, plus images, which cost more tokens than their bytes:
at most :func:`~aigw.proxy.counting.images.max_image_tokens` each. A body with
no ``\\u00`` escape (none of an ASCII character, so no letter of ``image_url``
spelled as one) holds at most as many image parts as occurrences of
``image_url``; otherwise every 20 bytes could be one (``{"type":"image_url"}``
is 20 bytes).

A ``file`` part is the exception: a PDF's compressed streams inflate to more
text than its bytes (:mod:`~aigw.proxy.counting.files`), so a body that may hold
one (the JSON string ``"file"``, or an escape of one of its letters) has no
bound from its size: :data:`NO_BOUND`.
"""

from __future__ import annotations

import re
from typing import Final

from aigw.proxy.counting.images import max_image_tokens

__all__ = ["NO_BOUND", "holds_quoted", "input_upper_bound"]

NO_BOUND: Final = 1 << 62

_TOKENS_PER_BYTE: Final = 3
_CONSTANT: Final = 16
_SMALLEST_IMAGE_PART: Final = 20
# JSON escapes of e, f, i, l (u0065, u0066, u0069, u006c): "file" spelled with an escape.
_FILE_LETTER_ESCAPE: Final = re.compile(rb"\\u006[569cC]")


# A large body with few quotes (a long prompt) is searched for quoted words at
# its quotes (found by memchr): a word search steps through all of it (~0.3 ms
# per 590 KB each, on the event loop).
_QUOTE_WALK_BYTES: Final = 64 * 1024
_QUOTE_WALK_QUOTES: Final = 4096


def _quoted_count(raw: bytes, words: tuple[bytes, ...], stop: bool) -> int | None:
    """Occurrences of *words* (each starting with a quote) at *raw*'s quotes
    (``stop``: up to the first); ``None`` when the body is small or has more
    than :data:`_QUOTE_WALK_QUOTES` quotes (then a plain search is as quick)."""
    if len(raw) <= _QUOTE_WALK_BYTES:
        return None
    find, starts = raw.find, raw.startswith
    found = 0
    at = find(b'"')
    for _ in range(_QUOTE_WALK_QUOTES):
        if at < 0:
            return found
        if starts(words, at):
            found += 1
            if stop:
                return found
        at = find(b'"', at + 1)
    return found if at < 0 else None


def holds_quoted(raw: bytes, words: tuple[bytes, ...]) -> bool:
    """Whether one of *words* (each starting with a quote) occurs in *raw*:
    ``any(word in raw for word in words)``, found at *raw*'s quotes when a large
    body has few of them."""
    if len(raw) > _QUOTE_WALK_BYTES:
        found = _quoted_count(raw, words, stop=True)
        if found is not None:
            return found > 0
    return any(map(raw.__contains__, words))


def input_upper_bound(raw: bytes, model: str) -> int:
    """An upper bound of the input tokens of the Chat Completions request *raw*."""
    if holds_quoted(raw, (b'"file"',)):
        return NO_BOUND
    # Each scan of a large body costs ~0.1 ms per 100 KB on the event loop: the
    # escape regex runs only when the body holds an escape at all. Only an escape
    # of an ASCII character (\u00XX) can spell a letter of "file" or "image_url".
    escapes = b"\\u00" in raw
    if escapes and _FILE_LETTER_ESCAPE.search(raw):
        return NO_BOUND
    if escapes:
        images = len(raw) // _SMALLEST_IMAGE_PART
    else:
        # Without escapes an image part spells "image_url" with its quotes (its
        # type, or its key): counted at the quotes of a long prompt.
        quoted = None
        if len(raw) > _QUOTE_WALK_BYTES:
            quoted = _quoted_count(raw, (b'"image_url"',), stop=False)
        images = raw.count(b"image_url") if quoted is None else quoted
    bound = _TOKENS_PER_BYTE * len(raw) + _CONSTANT
    return bound + images * max_image_tokens(model) if images else bound

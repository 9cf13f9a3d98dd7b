"""A bound on a request's input tokens read from its size alone, in O(1)
Python steps (two ``bytes`` scans in C).

Every rule of :mod:`aigw.proxy.counting.prompt` costs at most three tokens per
byte of the request's JSON (a token covers at least one byte of text; the
fixed costs of a message, a name, a tool call or the parallel-call wrapper
each come with more JSON bytes than a third of their tokens; results of
parallel calls re-escaped as ``\\uXXXX`` stay under three tokens per source
byte), plus a constant, plus images, which cost more tokens than their bytes:
at most :func:`~aigw.proxy.counting.images.max_image_tokens` each. A body with
no ``\\u`` escape holds at most as many image parts as occurrences of
``image_url``; otherwise every 20 bytes could be one (``{"type":"image_url"}``
is 20 bytes).
"""

from __future__ import annotations

from typing import Final

from aigw.proxy.counting.images import max_image_tokens

__all__ = ["input_upper_bound"]

_TOKENS_PER_BYTE: Final = 3
_CONSTANT: Final = 16
_SMALLEST_IMAGE_PART: Final = 20


def input_upper_bound(raw: bytes, model: str) -> int:
    """An upper bound of the input tokens of the Chat Completions request *raw*."""
    images = len(raw) // _SMALLEST_IMAGE_PART if b"\\u" in raw else raw.count(b"image_url")
    return _TOKENS_PER_BYTE * len(raw) + _CONSTANT + images * max_image_tokens(model)

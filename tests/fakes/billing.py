"""How the fake upstream counts tokens: its own rules, written from OpenAI's
public documentation and tiktoken alone, never from aigw's code.

A test that compares the gateway's counts with what this fake billed is then
comparing two independent implementations (for a plain conversation both must
equal what OpenAI bills), not aigw with itself. Nothing here is imported
from the gateway's package.

Rules
-----
* **Encoding.** tiktoken's own ``cl100k_base`` / ``o200k_base``, built by
  tiktoken (its pattern, special tokens and SHA-256 check, from
  ``tiktoken_ext.openai_public``) out of the ``.tiktoken`` files in
  ``src/aigw/encodings``, read by path: they are the files tiktoken downloads,
  so nothing touches the network. The model picks the encoding by tiktoken's
  own model table (``tiktoken.model.encoding_name_for_model``); a model it
  does not know gets ``o200k_base``.
* **prompt_tokens.** The formula in OpenAI's cookbook "How to count tokens
  with tiktoken" (``num_tokens_from_messages``): 3 per message, plus the
  tokens of every string field of the message (``role``, ``content``,
  ``name``, …), plus 1 per ``name``, plus 3 priming the reply. A content given
  as a list of parts counts the text of its ``text`` parts. Everything else
  (``tools``, ``functions``, images, ``tool_calls``, ``response_format``) is
  billed nothing: the fake agrees with OpenAI on plain conversations only, and
  tests that need an exact figure use those.
* **completion_tokens.** The tokens the fake generated: the output is produced
  one token (one piece of tiktoken's encoding) at a time and capped at the
  request's smaller of ``max_completion_tokens`` / ``max_tokens``, content and
  every tool call's arguments drawing on the one budget; a tool call's name is
  not billed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.model
import tiktoken_ext.openai_public

__all__ = ["encoding_for_model", "load_encoding", "prompt_tokens", "token_pieces"]

ENCODINGS_DIR = Path(__file__).resolve().parents[2] / "src" / "aigw" / "encodings"
# Where tiktoken downloads each file from (tiktoken_ext/openai_public.py); its
# download cache holds a file under the SHA-1 of this URL.
_DOWNLOAD_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
_FALLBACK = "o200k_base"

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3


@functools.cache
def load_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken's encoding *name* (``cl100k_base`` or ``o200k_base``), built by
    tiktoken from the file in ``src/aigw/encodings``, offline.

    The file is put in a temporary tiktoken download cache, which
    ``TIKTOKEN_CACHE_DIR`` points at while tiktoken reads it (so call this at
    start-up, not from several threads at once).
    """
    constructor = tiktoken_ext.openai_public.ENCODING_CONSTRUCTORS[name]
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="fake-tiktoken-") as cache:
        key = hashlib.sha1(_DOWNLOAD_URL.format(name).encode()).hexdigest()
        shutil.copy(ENCODINGS_DIR / f"{name}.tiktoken", Path(cache) / key)
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        try:
            return tiktoken.Encoding(**constructor())
        finally:
            if previous is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous


def encoding_for_model(model: str) -> str:
    """The encoding tiktoken's model table gives *model*; ``o200k_base`` for a
    model it does not know."""
    try:
        return tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return _FALLBACK


def prompt_tokens(body: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    """The cookbook's ``num_tokens_from_messages`` for the body's ``messages``
    (see the module docstring for what it leaves out)."""
    messages = body.get("messages")
    total = _REPLY_PRIMING
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, Mapping):
            continue
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            for text in _texts(value):
                total += len(encoding.encode_ordinary(text))
            if key == "name":
                total += _TOKENS_PER_NAME
    return total


def _texts(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, Mapping) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    yield text


def token_pieces(encoding: tiktoken.Encoding, text: str) -> Iterator[tuple[str, int]]:
    """*text* as the fake generates it: one ``(piece, tokens)`` per token, a
    character split across tokens held back until whole (its piece then
    carries all of them)."""
    pending = b""
    count = 0
    for token in encoding.encode_ordinary(text):
        pending += encoding.decode_single_token_bytes(token)
        count += 1
        try:
            piece = pending.decode("utf-8")
        except UnicodeDecodeError:
            continue
        yield piece, count
        pending, count = b"", 0
    if pending:
        yield pending.decode("utf-8", errors="replace"), count

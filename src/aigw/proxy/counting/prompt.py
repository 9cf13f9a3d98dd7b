"""Counting a Chat Completions request's input the way OpenAI bills its
``prompt_tokens``.

:func:`count_chat_input` counts exactly; :func:`count_chat_input_async` does
the same under a size cap, off the event loop for large prompts.

How a request is counted
------------------------
Per OpenAI's cookbook "How to count tokens with tiktoken"
(openai/openai-cookbook, ``examples/How_to_count_tokens_with_tiktoken.ipynb``),
for current models (gpt-3.5-turbo-0125, gpt-4, gpt-4o, gpt-4o-mini and later):

* every message costs 3 tokens plus the tokens of its role and its content;
  a ``name`` costs its tokens plus 1; every reply is primed with 3 tokens.

Tool and function definitions are rendered by
:func:`~aigw.proxy.counting.functions.render_functions` and counted with the
empirical constants established by hmarr/openai-chat-tokens (definitions + 9;
-4 and a newline appended to the first system message when there is a system
message; ``function`` role messages -2; an assistant ``function_call`` +3).
Those rules reproduce the figures the cookbook reports from the OpenAI API
exactly, for both encodings (see ``tests/proxy/counting/``). Where OpenAI
publishes nothing, the estimate is stated where it is made:

* ``tool_calls`` in assistant history count like the legacy ``function_call``
  (name + arguments + 3, per call); a ``tool`` message counts like a
  ``function`` message named after the function it answers (found through
  ``tool_call_id``).
* ``tool_choice`` / ``function_call`` naming a function: its name + 4;
  ``"none"``: 1 (hmarr's measurements for ``function_call``).
* ``response_format`` with a ``json_schema``: OpenAI feeds the schema to the
  model in an unpublished rendering; we count the tokens of the schema's name
  and its compact JSON text, an estimate that errs high (``json_object`` and
  ``text`` add nothing).
* Images: OpenAI's published per-model rates
  (:func:`~aigw.proxy.counting.images.image_tokens`). ``input_audio``: its
  duration at 20 tokens a second (:mod:`~aigw.proxy.counting.media`); ``file``
  parts as their JSON text (docs/proxy.md, "Input counting").

Text is always encoded with ``encode_ordinary``: a client sending
``<|endoftext|>`` gets it counted as ordinary text, never as a special token.

Size cap
--------
Tokenizing costs CPU linear in the text (about 50 MB/s). Above
``max_chars`` characters of text, :func:`count_chat_input_async` stops
tokenizing and returns a *lower bound* (:class:`InputCount` with
``exact=False``): no token of either encoding decodes to more than 128 bytes,
so a text of ``c`` characters is at least ``ceil(c / 128)`` tokens. A text
crossing the cap is split where a newline is followed by a letter, a place no
regex pre-token of either encoding spans, so its head is counted exactly and
only its tail is bounded. A request whose lower bound already exceeds a limit
is provably over it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

import tiktoken

from aigw.proxy.counting.collect import Prompt, collect
from aigw.proxy.counting.encodings import MAX_TOKEN_BYTES

__all__ = ["InputCount", "count_chat_input", "count_chat_input_async", "count_collected"]

DEFAULT_MAX_TOKENIZE_CHARS: Final = 2_000_000
# Below this many characters a prompt is tokenized inline: ~1 ms of CPU costs
# less than a hop to a thread and back.
INLINE_TOKENIZE_CHARS: Final = 50_000
# A request body up to this size is walked and counted inline (well under a
# millisecond); a larger one in the tokenizer threads.
INLINE_BODY_BYTES: Final = 32 * 1024


@dataclass(frozen=True, slots=True)
class InputCount:
    """The input tokens of a request.

    ``tokens`` is the exact count when ``exact``; otherwise (the text exceeded
    the tokenizing cap) it is a lower bound of the exact count.
    """

    tokens: int
    exact: bool = True
    # Set when part of the request cannot be counted at all (a file referenced
    # by id, a file whose text cannot be bounded): ``tokens`` is then only what
    # could be counted, and a key with an input limit refuses the request.
    uncountable: str = ""

    def is_over(self, limit: int) -> bool | None:
        """Whether the request is over *limit* (0 = unlimited): ``True`` or
        ``False`` when that is certain, ``None`` when only a lower bound is
        known and it does not exceed the limit."""
        if limit <= 0:
            return False
        if self.tokens > limit:
            return True
        return False if self.exact else None


def count_chat_input(request_body: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    """The ``prompt_tokens`` OpenAI bills for this Chat Completions request,
    counted with *encoding*. Exact, with no size cap; never raises on
    malformed bodies (unknown shapes count as nothing)."""
    prompt = collect(request_body)
    return prompt.fixed + _texts_tokens(encoding, prompt.texts)


async def count_chat_input_async(
    request_body: Mapping[str, Any],
    encoding: tiktoken.Encoding,
    *,
    max_chars: int = DEFAULT_MAX_TOKENIZE_CHARS,
    body_bytes: int | None = None,
    inline_bytes: int = INLINE_BODY_BYTES,
    inline_chars: int = INLINE_TOKENIZE_CHARS,
    executor: Executor | None = None,
    stop_above: int | None = None,
) -> InputCount:
    """Like :func:`count_chat_input`, but tokenizes at most *max_chars*
    characters of text (beyond that the count is a lower bound), and without
    stalling the event loop.

    With *body_bytes* (the size of the request as received), a body of at
    most *inline_bytes* is counted inline and a larger one entirely in
    *executor* (``Encoders.executor``; ``None``: the loop's default): walking
    the body costs time linear in its size too, so nothing that grows with
    the body runs on the loop. Without it, the body is walked inline and
    prompts over *inline_chars* characters are tokenized in *executor*.

    *stop_above* (a ``reject`` key's input limit) lets a file part stop being
    read once its bound passes it (:func:`.collect.collect`).
    """
    loop = asyncio.get_running_loop()
    if body_bytes is not None:
        if body_bytes <= inline_bytes:
            return count_collected(collect(request_body, stop_above), encoding, max_chars)
        return await loop.run_in_executor(
            executor, _collect_and_count, request_body, encoding, max_chars, stop_above
        )
    prompt = collect(request_body, stop_above)
    if prompt.chars <= inline_chars:
        return count_collected(prompt, encoding, max_chars)
    return await loop.run_in_executor(executor, count_collected, prompt, encoding, max_chars)


def _collect_and_count(
    body: Mapping[str, Any],
    encoding: tiktoken.Encoding,
    max_chars: int,
    stop_above: int | None = None,
) -> InputCount:
    return count_collected(collect(body, stop_above), encoding, max_chars)


def count_collected(prompt: Prompt, encoding: tiktoken.Encoding, max_chars: int) -> InputCount:
    """The count of a collected *prompt*, tokenizing at most *max_chars* characters."""
    counter = _counter(encoding)
    tokens = prompt.fixed
    if prompt.chars <= max_chars:
        tokens += _texts_tokens(encoding, prompt.texts)
        if prompt.uncountable:
            return InputCount(tokens, exact=False, uncountable=prompt.uncountable)
        return InputCount(tokens)
    budget = max_chars
    for text in prompt.texts:
        if len(text) <= budget:
            tokens += _text_tokens(counter, text)
            budget -= len(text)
            continue
        cut = _safe_split(text, budget, max(0, budget - _SEGMENT_CHARS)) if budget else 0
        if cut:
            tokens += _text_tokens(counter, text[:cut])
            budget -= cut
        tokens += -(-(len(text) - cut) // MAX_TOKEN_BYTES)
    return InputCount(tokens, exact=False, uncountable=prompt.uncountable)


def _texts_tokens(encoding: tiktoken.Encoding, texts: list[str]) -> int:
    # Joining texts to save calls was measured: no gain (tiktoken's cost is per
    # character, ~2 us per call on top), so each text is encoded on its own.
    counter = _counter(encoding)
    return sum(_text_tokens(counter, text) for text in texts if text)


# From this many characters a text is counted through tiktoken's token buffer
# rather than the list of ints ``encode_ordinary`` returns: the same tokens
# without a Python int per token, ~10% less CPU on long texts (more per call
# below it).
_BUFFER_CHARS: Final = 1024
_NO_SPECIAL: Final[set[str]] = set()


# Short texts that recur in every request (roles, names) are counted once per
# encoding: a dict lookup instead of a tokenizer call. Bounded: once it holds
# this many texts, new ones are counted each time.
_MEMO_CHARS: Final = 16
_MEMO_SIZE: Final = 4096


@functools.lru_cache(maxsize=8)
def _counter(encoding: tiktoken.Encoding) -> Callable[[str], int]:
    """``len(encoding.encode_ordinary(text))``, as a function of *text* (one per
    encoding, built once).

    Long texts go through the core's ``encode_to_tiktoken_buffer`` (what
    tiktoken's ``encode_to_numpy`` calls) with no special token allowed, which
    encodes exactly as ``encode_ordinary`` (special-token text is ordinary text;
    a test compares them); a text tiktoken cannot take as UTF-8 (a lone
    surrogate) gets ``encode_ordinary``'s own repair. A tiktoken without that
    call counts the list. Texts of at most 16 characters are remembered.
    """
    encode = encoding.encode_ordinary
    to_buffer = getattr(getattr(encoding, "_core_bpe", None), "encode_to_tiktoken_buffer", None)
    memo: dict[str, int] = {}

    def count(text: str) -> int:
        size = len(text)
        if size <= _MEMO_CHARS:
            tokens = memo.get(text)
            if tokens is None:
                tokens = len(encode(text))
                if len(memo) < _MEMO_SIZE:
                    memo[text] = tokens
            return tokens
        if size < _BUFFER_CHARS or to_buffer is None:
            return len(encode(text))
        try:
            return memoryview(to_buffer(text, _NO_SPECIAL)).nbytes // 4
        except UnicodeEncodeError:
            return len(encode(text))

    return count


# Longer texts are encoded in segments cut where counts add up exactly:
# tiktoken builds its result list while holding the GIL, so one call on a huge
# text would stall the event loop (and hold a list of all its tokens).
_SEGMENT_CHARS = 1 << 16


def _text_tokens(count: Callable[[str], int], text: str) -> int:
    if len(text) <= _SEGMENT_CHARS:
        return count(text)
    total = 0
    start = 0
    while len(text) - start > _SEGMENT_CHARS:
        target = start + _SEGMENT_CHARS
        cut = _safe_split(text, target, start) or _safe_split_after(text, target)
        if not cut:
            break
        total += count(text[start:cut])
        start = cut
    return total + count(text[start:])


def _safe_split(text: str, end: int, start: int = 0) -> int:
    """The largest ``i`` in ``(start, end]`` where ``text[i-1]`` is a newline
    and ``text[i]`` a letter; 0 if none.

    No pre-token of either encoding's regex spans such a place, nor does
    matching on one side look past it, so
    ``tokens(text) == tokens(text[:i]) + tokens(text[i:])``.
    """
    last = len(text) - 1
    i = text.rfind("\n", start, min(end, last))
    while i != -1:
        if text[i + 1].isalpha():
            return i + 1
        i = text.rfind("\n", start, i)
    return 0


def _safe_split_after(text: str, start: int) -> int:
    """The smallest such split point after *start*; 0 if none."""
    last = len(text) - 1
    i = text.find("\n", start, last)
    while i != -1:
        if text[i + 1].isalpha():
            return i + 1
        i = text.find("\n", i + 1, last)
    return 0

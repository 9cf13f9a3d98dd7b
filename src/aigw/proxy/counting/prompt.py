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
  (:func:`~aigw.proxy.counting.images.image_tokens`). ``input_audio`` and
  ``file`` parts are not counted (they cannot be priced without decoding the
  media).

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
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

import tiktoken

from aigw.proxy.counting.encodings import MAX_TOKEN_BYTES
from aigw.proxy.counting.functions import compact_json, function_definitions, render_functions
from aigw.proxy.counting.images import image_part_tokens

__all__ = ["InputCount", "count_chat_input", "count_chat_input_async"]

DEFAULT_MAX_TOKENIZE_CHARS: Final = 2_000_000
# Below this many characters a prompt is tokenized inline: ~1 ms of CPU costs
# less than a hop to a thread and back.
INLINE_TOKENIZE_CHARS: Final = 50_000

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3
_FUNCTIONS_OVERHEAD = 9
_FUNCTIONS_WITH_SYSTEM = -4
_FUNCTION_ROLE = -2
_FUNCTION_CALL = 3
_FORCED_FUNCTION = 4
_TOOL_CHOICE_NONE = 1

_SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class InputCount:
    """The input tokens of a request.

    ``tokens`` is the exact count when ``exact``; otherwise (the text exceeded
    the tokenizing cap) it is a lower bound of the exact count.
    """

    tokens: int
    exact: bool = True

    def is_over(self, limit: int) -> bool | None:
        """Whether the request is over *limit* (0 = unlimited): ``True`` or
        ``False`` when that is certain, ``None`` when only a lower bound is
        known and it does not exceed the limit."""
        if limit <= 0:
            return False
        if self.tokens > limit:
            return True
        return False if self.exact else None


@dataclass(slots=True)
class _Prompt:
    """What a request is made of, for counting: fixed token costs plus the
    texts still to encode."""

    fixed: int
    texts: list[str]
    chars: int


def count_chat_input(request_body: Mapping[str, Any], encoding: tiktoken.Encoding) -> int:
    """The ``prompt_tokens`` OpenAI bills for this Chat Completions request,
    counted with *encoding*. Exact, with no size cap; never raises on
    malformed bodies (unknown shapes count as nothing)."""
    prompt = _collect(request_body)
    encode = encoding.encode_ordinary
    return prompt.fixed + sum(_text_tokens(encode, text) for text in prompt.texts)


async def count_chat_input_async(
    request_body: Mapping[str, Any],
    encoding: tiktoken.Encoding,
    *,
    max_chars: int = DEFAULT_MAX_TOKENIZE_CHARS,
    inline_chars: int = INLINE_TOKENIZE_CHARS,
    executor: Executor | None = None,
) -> InputCount:
    """Like :func:`count_chat_input`, but tokenizes at most *max_chars*
    characters of text (beyond that the count is a lower bound), and without
    stalling the event loop.

    Prompts of at most *inline_chars* characters are counted inline; larger
    ones in *executor* (``Encoders.executor``; ``None``: the loop's default),
    where tiktoken runs without the GIL.
    """
    prompt = _collect(request_body)
    if prompt.chars <= inline_chars:
        return _count(prompt, encoding, max_chars)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, _count, prompt, encoding, max_chars)


def _count(prompt: _Prompt, encoding: tiktoken.Encoding, max_chars: int) -> InputCount:
    encode = encoding.encode_ordinary
    tokens = prompt.fixed
    if prompt.chars <= max_chars:
        return InputCount(tokens + sum(_text_tokens(encode, text) for text in prompt.texts))
    budget = max_chars
    for text in prompt.texts:
        if len(text) <= budget:
            tokens += _text_tokens(encode, text)
            budget -= len(text)
            continue
        cut = _safe_split(text, budget, max(0, budget - _SEGMENT_CHARS)) if budget else 0
        if cut:
            tokens += _text_tokens(encode, text[:cut])
            budget -= cut
        tokens += -(-(len(text) - cut) // MAX_TOKEN_BYTES)
    return InputCount(tokens, exact=False)


# Longer texts are encoded in segments cut where counts add up exactly:
# tiktoken builds its result list while holding the GIL, so one call on a huge
# text would stall the event loop (and hold a list of all its tokens).
_SEGMENT_CHARS = 1 << 16


def _text_tokens(encode: Callable[[str], list[int]], text: str) -> int:
    if len(text) <= _SEGMENT_CHARS:
        return len(encode(text))
    total = 0
    start = 0
    while len(text) - start > _SEGMENT_CHARS:
        target = start + _SEGMENT_CHARS
        cut = _safe_split(text, target, start) or _safe_split_after(text, target)
        if not cut:
            break
        total += len(encode(text[start:cut]))
        start = cut
    return total + len(encode(text[start:]))


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


def _collect(body: Mapping[str, Any]) -> _Prompt:
    texts: list[str] = []
    fixed = _REPLY_PRIMING
    model = body.get("model")
    model = model if isinstance(model, str) else ""

    functions = function_definitions(body)
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []

    tool_names: dict[str, str] = {}
    pad_system = bool(functions)
    has_system = False
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        fixed += _TOKENS_PER_MESSAGE
        role = message.get("role")
        if not isinstance(role, str):
            role = None
        else:
            texts.append(role)
        is_system = role in _SYSTEM_ROLES
        has_system = has_system or is_system
        # With functions, the first system message carries a trailing newline
        # (measured by hmarr/openai-chat-tokens; it can merge with the text).
        suffix = ""
        if is_system and pad_system:
            suffix, pad_system = "\n", False
        fixed += _content(message.get("content"), texts, model, suffix)
        refusal = message.get("refusal")
        if isinstance(refusal, str):
            texts.append(refusal)

        name = message.get("name")
        call_id = message.get("tool_call_id")
        if role == "tool" and isinstance(call_id, str):
            name = tool_names.get(call_id, name)
        if isinstance(name, str):
            texts.append(name)
            fixed += _TOKENS_PER_NAME
        if role in ("function", "tool") and isinstance(name, str):
            fixed += _FUNCTION_ROLE

        call = message.get("function_call")
        if isinstance(call, Mapping):
            fixed += _function_call(call, texts)
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            for tool_call in tool_calls:
                if not isinstance(tool_call, Mapping):
                    continue
                function = tool_call.get("function")
                if isinstance(function, Mapping):
                    fixed += _function_call(function, texts)
                    call_id, fname = tool_call.get("id"), function.get("name")
                    if isinstance(call_id, str) and isinstance(fname, str):
                        tool_names[call_id] = fname

    if functions:
        texts.append(render_functions(functions))
        fixed += _FUNCTIONS_OVERHEAD + (_FUNCTIONS_WITH_SYSTEM if has_system else 0)
        fixed += _tool_choice(body.get("tool_choice", body.get("function_call")), texts)
    fixed += _response_format(body.get("response_format"), texts)
    return _Prompt(fixed, texts, sum(map(len, texts)))


def _content(content: object, texts: list[str], model: str, suffix: str) -> int:
    """Append the text of a message's content; return its fixed token cost."""
    if isinstance(content, str):
        texts.append(content + suffix if suffix else content)
        return 0
    if not isinstance(content, list):
        if suffix:
            texts.append(suffix)
        return 0
    fixed = 0
    last_text = -1
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text" or kind == "refusal":
            value = part.get(kind)
            if isinstance(value, str):
                texts.append(value)
                last_text = len(texts) - 1
        elif kind == "image_url":
            fixed += image_part_tokens(part.get("image_url"), model)
        # input_audio / file parts: not priced (see module docstring).
    if suffix:
        if last_text >= 0:
            texts[last_text] += suffix
        else:
            texts.append(suffix)
    return fixed


def _function_call(call: Mapping[str, Any], texts: list[str]) -> int:
    for key in ("name", "arguments"):
        value = call.get(key)
        if isinstance(value, str):
            texts.append(value)
    return _FUNCTION_CALL


def _tool_choice(choice: object, texts: list[str]) -> int:
    if choice == "none":
        return _TOOL_CHOICE_NONE
    if isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if isinstance(name, str):
            texts.append(name)
            return _FORCED_FUNCTION
    return 0


def _response_format(response_format: object, texts: list[str]) -> int:
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return 0
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping):
        return 0
    name = spec.get("name")
    if isinstance(name, str):
        texts.append(name)
    schema = spec.get("schema")
    if schema is not None:
        texts.append(compact_json(schema))
    return 0

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
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson
import tiktoken

from aigw.proxy.counting.encodings import MAX_TOKEN_BYTES
from aigw.proxy.counting.functions import compact_json, function_definitions, render_functions
from aigw.proxy.counting.images import image_part_tokens
from aigw.proxy.counting.rules import rules_for_model

__all__ = ["InputCount", "count_chat_input", "count_chat_input_async"]

DEFAULT_MAX_TOKENIZE_CHARS: Final = 2_000_000
# Below this many characters a prompt is tokenized inline: ~1 ms of CPU costs
# less than a hop to a thread and back.
INLINE_TOKENIZE_CHARS: Final = 50_000
# A request body up to this size is walked and counted inline (well under a
# millisecond); a larger one in the tokenizer threads.
INLINE_BODY_BYTES: Final = 32 * 1024

_REPLY_PRIMING = 3
_FUNCTIONS_OVERHEAD = 9
_FUNCTIONS_WITH_SYSTEM = -4
_FUNCTION_ROLE = -2
_FUNCTION_CALL = 3
# Per tool call besides its name (twice) and compact arguments: fitted to the
# single-call cases of chrisdinn/tokens (gpt-4-0125-preview), which also fits
# forestwanglin/openai-java#5 (gpt-4-0613) exactly.
_TOOL_CALL = 5
_TOOL_CHOICE_NONE = 1

# Text OpenAI's tool renderer drops (const values, format, pattern, nested
# descriptions on 0613, unknown schema keys) is not billed by OpenAI, but it is
# forwarded: up to this many characters per request it is free, beyond that all
# of it is counted, so it cannot carry a prompt past the limit.
_FREE_UNSHOWN_CHARS = 256
# Ids (tool_call_id, tool_calls[].id) and settings (user, service_tier, …) are
# not shown to the model; longer than this, they are counted as text anyway.
_FREE_ID_CHARS = 64
_FREE_SETTING_CHARS = 64
_FREE_SETTING_ITEMS = 64
# A remote image URL is not shown to the model; a longer one is counted as text.
_FREE_URL_CHARS = 2048
_YIELD_EVERY = 512

# Top-level fields with their own rule in _Collector.
_BODY_RULES = frozenset({"messages", "model", "tool_choice", "function_call"})
# Sampling and transport settings: free while they hold no text (_is_setting).
_SETTINGS = frozenset(
    {
        "stream",
        "stream_options",
        "n",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "presence_penalty",
        "frequency_penalty",
        "parallel_tool_calls",
        "store",
        "service_tier",
        "reasoning_effort",
        "verbosity",
        "user",
        "metadata",
        "stop",
        "modalities",
        "prompt_cache_key",
        "safety_identifier",
    }
)
# Message fields with their own rule; anything else is counted as JSON text.
_MESSAGE_FIELDS = frozenset({"role", "content"})
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
    """
    loop = asyncio.get_running_loop()
    if body_bytes is not None:
        if body_bytes <= inline_bytes:
            return _count(_collect(request_body), encoding, max_chars)
        return await loop.run_in_executor(
            executor, _collect_and_count, request_body, encoding, max_chars
        )
    prompt = _collect(request_body)
    if prompt.chars <= inline_chars:
        return _count(prompt, encoding, max_chars)
    return await loop.run_in_executor(executor, _count, prompt, encoding, max_chars)


def _collect_and_count(
    body: Mapping[str, Any], encoding: tiktoken.Encoding, max_chars: int
) -> InputCount:
    return _count(_collect(body), encoding, max_chars)


def _count(prompt: _Prompt, encoding: tiktoken.Encoding, max_chars: int) -> InputCount:
    encode = encoding.encode_ordinary
    tokens = prompt.fixed
    if prompt.chars <= max_chars:
        return InputCount(tokens + _texts_tokens(encoding, prompt.texts))
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


def _texts_tokens(encoding: tiktoken.Encoding, texts: list[str]) -> int:
    # Joining texts to save calls was measured: no gain (tiktoken's cost is per
    # character, ~2 us per call on top), so each text is encoded on its own.
    encode = encoding.encode_ordinary
    return sum(_text_tokens(encode, text) for text in texts if text)


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
    return _Collector(body).prompt()


class _Collector:
    """One pass over a request body: every field is either counted by a known
    rule or, when unknown, as its JSON text (see docs/proxy.md, "Input
    counting")."""

    __slots__ = (
        "_body",
        "fixed",
        "model",
        "parallel_ids",
        "rules",
        "texts",
        "tool_names",
        "unshown",
    )

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.texts: list[str] = []
        self.fixed = _REPLY_PRIMING
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        self.rules = rules_for_model(self.model)
        self.tool_names: dict[str, str] = {}
        self.parallel_ids: set[str] = set()
        # Text OpenAI's renderer drops; counted when more than _FREE_UNSHOWN_CHARS.
        self.unshown: list[str] = []
        self._body = body

    def prompt(self) -> _Prompt:
        body = self._body
        functions = function_definitions(body)
        messages = body.get("messages")
        has_system = self._messages(messages if isinstance(messages, list) else [], bool(functions))
        if functions:
            rendered = render_functions(
                functions,
                nested_descriptions=self.rules.nested_descriptions,
                first_bare_property=self.rules.first_bare_property,
            )
            self.texts.append(rendered.text)
            self.fixed += rendered.adjust
            self.unshown.extend(rendered.unshown)
            self.fixed += _FUNCTIONS_OVERHEAD + (_FUNCTIONS_WITH_SYSTEM if has_system else 0)
            self._tool_choice(body.get("tool_choice", body.get("function_call")))
        elif "tool_choice" in body or "function_call" in body:
            self._tool_choice(body.get("tool_choice", body.get("function_call")))
        for key, value in body.items():
            if key in _BODY_RULES:
                continue
            if key in _SETTINGS and _is_setting(value):
                continue
            if key == "tools":
                self._other_tools(value)
            elif key == "response_format":
                self._response_format(value)
            elif key == "functions":
                if isinstance(value, list):
                    for function in value:
                        if not isinstance(function, Mapping):
                            self._json(function)
                else:
                    self._json(value)
            elif key == "prediction":
                self._json(value)
            else:
                self._json({key: value})
        if sum(map(len, self.unshown)) > _FREE_UNSHOWN_CHARS:
            self.texts.extend(self.unshown)
        return _Prompt(self.fixed, self.texts, sum(map(len, self.texts)))

    def _json(self, value: object) -> None:
        self.texts.append(compact_json(value))

    def _messages(self, messages: list[Any], functions: bool) -> bool:
        rules = self.rules
        pad_system = functions
        has_system = False
        texts = self.texts
        for index, message in enumerate(messages):
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                # Walking a huge body in a worker thread holds the GIL; hand it to
                # the event loop now and then rather than every 5 ms.
                time.sleep(0)
            if not isinstance(message, Mapping):
                self._json(message)
                continue
            self.fixed += rules.per_message
            role = message.get("role")
            if isinstance(role, str):
                texts.append(role)
            elif role is not None:
                self._json(role)
                role = None
            is_system = role in _SYSTEM_ROLES
            has_system = has_system or is_system
            # With functions, the first system message carries a trailing newline
            # (measured by hmarr/openai-chat-tokens; it can merge with the text).
            suffix = ""
            if is_system and pad_system:
                suffix, pad_system = "\n", False
            content = message.get("content")
            if role == "tool" and isinstance(content, str):
                call_id = message.get("tool_call_id")
                if (
                    rules.parallel_results_as_json
                    and _is_id(call_id)
                    and call_id in self.parallel_ids
                ):
                    # Results of parallel calls are fed back as JSON strings
                    # (\uXXXX escapes for non-ASCII), thread 1375117.
                    content = json.dumps(content)
            self._content(content, suffix)
            for key, value in message.items():
                if key in _MESSAGE_FIELDS:
                    continue
                if key == "refusal" and isinstance(value, str):
                    texts.append(value)
                elif key == "name" and isinstance(value, str):
                    self._name(message, role, value)
                elif key == "function_call" and isinstance(value, Mapping):
                    self._function_call(value)
                elif key == "tool_calls" and isinstance(value, list):
                    self._tool_calls(value, content)
                elif key == "tool_call_id" and _is_id(value):
                    continue
                elif value is not None:
                    self._json({key: value})
        return has_system

    def _name(self, message: Mapping[str, Any], role: object, name: str) -> None:
        call_id = message.get("tool_call_id")
        if role == "tool" and _is_id(call_id) and self.tool_names.get(call_id) == name:
            # The function's name was counted with its call (chrisdinn/tokens, issue #5 case).
            self.fixed += 1
            return
        self.texts.append(name)
        self.fixed += self.rules.per_name
        if role == "function":
            self.fixed += _FUNCTION_ROLE

    def _content(self, content: object, suffix: str) -> None:
        texts = self.texts
        if isinstance(content, str):
            texts.append(content + suffix if suffix else content)
            return
        if not isinstance(content, list):
            if content is not None:
                self._json(content)
            if suffix:
                texts.append(suffix)
            return
        last_text = -1
        for part in content:
            if not isinstance(part, Mapping):
                self._json(part)
                continue
            kind = part.get("type")
            if kind == "text" or kind == "refusal":
                value = part.get(kind)
                if isinstance(value, str):
                    texts.append(value)
                    last_text = len(texts) - 1
                else:
                    self._json(value)
                self._extra(part, ("type", kind, "cache_control"))
            elif kind == "image_url":
                image = part.get("image_url")
                self.fixed += image_part_tokens(image, self.model)
                # Reading an image header takes up to ~1 ms of GIL: let the loop in.
                time.sleep(0)
                url = image.get("url") if isinstance(image, Mapping) else image
                if (
                    isinstance(url, str)
                    and not url.startswith("data:")
                    and len(url) > _FREE_URL_CHARS
                ):
                    texts.append(url)
                if isinstance(image, Mapping):
                    self._extra(image, ("url", "detail"))
                self._extra(part, ("type", "image_url"))
            else:
                # input_audio, file and unknown parts: their JSON text (errs high
                # for media; see docs/proxy.md).
                self._json(part)
        if suffix:
            if last_text >= 0:
                texts[last_text] += suffix
            else:
                texts.append(suffix)

    def _extra(self, mapping: Mapping[str, Any], known: tuple[object, ...]) -> None:
        for key, value in mapping.items():
            if key not in known:
                self._json({key: value})

    def _function_call(self, call: Mapping[str, Any]) -> None:
        # Legacy function_call (0613): name + arguments as sent + 3 (hmarr).
        for key, value in call.items():
            if key in ("name", "arguments") and isinstance(value, str):
                self.texts.append(value)
            else:
                self._json({key: value})
        self.fixed += _FUNCTION_CALL

    def _tool_calls(self, calls: list[Any], content: object) -> None:
        if not calls:
            return
        rules = self.rules
        if content:
            # Text and calls are shown as two messages (chrisdinn/tokens: +4).
            self.fixed += rules.per_message + 1
        parallel = len(calls) >= 2
        if parallel:
            self.fixed += rules.parallel_calls
        for call in calls:
            if not isinstance(call, Mapping):
                self._json(call)
                self.fixed += _TOOL_CALL
                continue
            kind = call.get("type", "function")
            body = call.get(kind) if isinstance(kind, str) else None
            call_id = call.get("id")
            if kind in ("function", "custom") and isinstance(body, Mapping):
                name = body.get("name")
                if isinstance(name, str):
                    # Once as the call's recipient, once as the result's author.
                    self.texts.extend((name, name))
                    if _is_id(call_id):
                        self.tool_names[call_id] = name
                        if parallel:
                            self.parallel_ids.add(call_id)
                for key, value in body.items():
                    if key == "name" and isinstance(value, str):
                        continue
                    if key in ("arguments", "input") and isinstance(value, str):
                        self.texts.append(_compact_arguments(value))
                    else:
                        self._json({key: value})
                self._extra(call, ("id", "type", kind) if _is_id(call_id) else ("type", kind))
            else:
                self._json(call)
            self.fixed += _TOOL_CALL

    def _tool_choice(self, choice: object) -> None:
        if choice is None or choice == "auto":
            return
        if choice in ("none", "required"):
            self.fixed += _TOOL_CHOICE_NONE
            return
        if isinstance(choice, Mapping):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
            if (
                isinstance(name, str)
                and len(choice) <= 2
                and (not isinstance(function, Mapping) or len(function) == 1)
            ):
                self.texts.append(name)
                self.fixed += self.rules.forced_function
                return
        self._json(choice)

    def _other_tools(self, tools: object) -> None:
        """Tools other than functions (custom, hosted, unknown): their JSON text."""
        if not isinstance(tools, list):
            self._json(tools)
            return
        for tool in tools:
            if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
                self._extra(tool, ("type", "function"))
                continue
            self._json(tool)

    def _response_format(self, response_format: object) -> None:
        if isinstance(response_format, Mapping) and response_format.get("type") in (
            "text",
            "json_object",
        ):
            self._extra(response_format, ("type",))
            return
        if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
            self._json(response_format)
            return
        # OpenAI's rendering of a json_schema is unpublished: its name and
        # compact JSON text, an estimate that errs high.
        spec = response_format.get("json_schema")
        if isinstance(spec, Mapping):
            for key, value in spec.items():
                if key == "name" and isinstance(value, str):
                    self.texts.append(value)
                elif key == "schema":
                    self._json(value)
                elif key != "strict" or not isinstance(value, bool):
                    self._json({key: value})
        elif spec is not None:
            self._json(spec)
        self._extra(response_format, ("type", "json_schema"))


def _compact_arguments(arguments: str) -> str:
    # Tool-call arguments are shown re-serialized compactly (chrisdinn/tokens:
    # adding a key costs what compact JSON costs); text that is not a JSON
    # object is shown as sent.
    if arguments[:1] != "{":
        return arguments
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return compact_json(value)


def _is_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= _FREE_ID_CHARS


def _is_setting(value: object) -> bool:
    """A value that cannot carry prompt text: a number, boolean, null, short
    string, or a small flat list/object of those."""
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return len(value) <= _FREE_SETTING_CHARS
    if isinstance(value, list):
        return len(value) <= _FREE_SETTING_ITEMS and all(_is_scalar_setting(v) for v in value)
    if isinstance(value, Mapping):
        return len(value) <= _FREE_SETTING_ITEMS and all(
            len(k) <= _FREE_SETTING_CHARS and _is_scalar_setting(v) for k, v in value.items()
        )
    return False


def _is_scalar_setting(value: object) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and len(value) <= _FREE_SETTING_CHARS

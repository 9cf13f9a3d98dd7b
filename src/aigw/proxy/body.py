"""Reading and parsing a /v1 request body, the same for every endpoint.

Size (the size-limit middleware's 413 becomes :class:`PayloadTooLarge`), content
type, JSON (orjson: NaN, Infinity, lone surrogates and invalid UTF-8 are
refused), and member names: what the upstream receives must be exactly what
was checked, and upstreams differ in how they read JSON (Go's
``encoding/json``, used by Ollama and others, matches member names
case-insensitively; parsers disagree on which duplicate wins). So a body with a
duplicate member name anywhere, or a case variant of a field an endpoint reads
(``"MODEL"``, ``"Max_Tokens"``, two names equal under Unicode case folding), is
refused with 400 ``ambiguous_field``. Each endpoint names the fields it reads
with a :class:`Names` spec. Work that grows with the body runs off the event
loop past the inline size (:func:`off_loop`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from aigw.errors import PayloadTooLarge
from aigw.proxy import counting
from aigw.proxy.errors import (
    AmbiguousField,
    ClientGone,
    InvalidJson,
    InvalidRequest,
)

if TYPE_CHECKING:
    pass


_JSON = b"application/json"


# Member names the gateway (or a provider translation) reads, per object it reads
# them in: a case variant of one of these could be read by an upstream in its place.
@dataclass(frozen=True, slots=True)
class Names:
    """The member names an endpoint reads in one kind of object (``known``), and
    the same for the objects it reads under some of them (``children``: the
    object at that field, or each object of the array there). Every known name
    is its own case folding (lower-case ASCII): an object whose names are all
    known then holds no case variant, which :func:`_case_variant` checks in one
    set operation."""

    known: frozenset[str]
    children: Mapping[str, Names] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.known:
            if name.casefold() != name:
                raise ValueError(f"a known member name must be folded: {name!r}")


def names(known: Iterable[str], **children: Names) -> Names:
    return Names(frozenset(known), children)


_OPTIONS = names({"include_usage", "include_obfuscation"})


_CALL = names({"id", "type", "function", "custom", "name", "arguments", "input"})


_CALL = names(_CALL.known, function=_CALL, custom=_CALL)


_TOOL = names({"type", "function", "custom", "name", "description", "parameters", "format"})


_TOOL = names(_TOOL.known, function=_TOOL, custom=_TOOL)


_PART = names(
    {"type", "text", "image_url", "input_audio", "file", "refusal", "url", "detail", "data"}
)


_MESSAGE = names(
    {"role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio"},
    content=_PART,
    tool_calls=_CALL,
    function_call=_CALL,
)


#: What ``POST /v1/chat/completions`` reads (:func:`ambiguous_names`).
CHAT_NAMES = names(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "n",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "response_format",
        "stop",
        "user",
        "metadata",
        "temperature",
        "top_p",
        "logprobs",
        "top_logprobs",
        "seed",
        "prediction",
        "audio",
        "modalities",
        "reasoning_effort",
        "store",
        "service_tier",
        "web_search_options",
        "chat_template",
        "chat_template_kwargs",
        "documents",
    },
    messages=_MESSAGE,
    stream_options=_OPTIONS,
    tools=_TOOL,
    functions=_TOOL,
)


class _Duplicate(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Duplicate(name)
            seen.add(name)
    return result


# Built once: json.loads with a hook builds a decoder (and its scanner) per call,
# which cost more than the decoding itself for a short body. decode() of the text
# json.loads would decode (its own detection of the encoding) is the same parse.
_UNIQUE_PAIRS = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def _check_names(
    obj: dict[str, Any], known: frozenset[str], where: str, index: int | None = None
) -> str | None:
    if known.issuperset(obj):
        # Known names are folded and a dict's names distinct: none folds onto another.
        return None
    seen: set[str] = set()
    for name in obj:
        folded = name.casefold()
        if folded in seen or (folded != name and folded in known):
            return f"{where}{name}" if index is None else f"{where}{index}.{name}"
        seen.add(folded)
    return None


def _case_variant(value: Any, spec: Names, where: str) -> str | None:
    # The object at a field, or each object of the array there (one level: the
    # names are read in no deeper arrays, and depth must not cost recursion).
    if isinstance(value, dict):
        return _object_variant(value, spec, where)
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                found = _object_variant(item, spec, where, index)
                if found:
                    return found
    return None


def _object_variant(
    obj: dict[str, Any], spec: Names, where: str, index: int | None = None
) -> str | None:
    # The path of *obj* (``where`` + its index in an array) is spelled out only
    # where it is needed: for a name found, or a child object or array to check.
    at = where if index is None else None
    found = _check_names(obj, spec.known, where, index)
    if found:
        return found
    for name, child in spec.children.items():
        value = obj.get(name)
        if isinstance(value, dict | list) and value:
            if at is None:
                at = f"{where}{index}."
            found = _case_variant(value, child, f"{at}{name}.")
            if found:
                return found
    return None


# Where a member name ends: its closing quote, optional JSON whitespace, the
# colon. Inside a string a quote is escaped (an odd run of backslashes before
# it), and a string value is never followed by a colon; so in valid JSON the
# matches of _NAME_END, less those after an odd run of backslashes, are exactly
# its members.
_NAME_END = re.compile(rb'"[ \t\n\r]*:')
_ESCAPED_END = re.compile(rb'\\"[ \t\n\r]*:')


# A large body with few quotes (a long prompt) has its names counted quote by
# quote (finds in C): the regexes above step through every byte in Python's
# regex engine (~0.6 ms per 590 KB, on the event loop).
_QUOTE_WALK_BYTES = 64 * 1024
_QUOTE_WALK_QUOTES = 4096
_QUOTE_WALK_BACKSLASHES = 64
_COLON_AFTER = re.compile(rb"[ \t\n\r]*:")


def _names_by_quotes(raw: bytes) -> int | None:
    """:func:`_names_in` quote by quote; ``None`` past :data:`_QUOTE_WALK_QUOTES`
    quotes (or a run of backslashes longer than 64 before one)."""
    names = 0
    find, colon = raw.find, _COLON_AFTER.match
    at = find(b'"')
    for _ in range(_QUOTE_WALK_QUOTES):
        if at < 0:
            return names
        start = at
        while start > 0 and raw[start - 1] == 0x5C:  # the backslashes before the quote
            start -= 1
            if at - start > _QUOTE_WALK_BACKSLASHES:
                return None
        if (at - start) % 2 == 0 and colon(raw, at + 1):  # an unescaped quote, then ':'
            names += 1
        at = find(b'"', at + 1)
    return names if at < 0 else None


def _names_in(raw: bytes) -> int:
    """How many members the valid JSON *raw* holds (see :data:`_NAME_END`)."""
    if len(raw) > _QUOTE_WALK_BYTES:
        counted = _names_by_quotes(raw)
        if counted is not None:
            return counted
    names = len(_NAME_END.findall(raw))
    for match in _ESCAPED_END.finditer(raw):
        end = match.start()
        start = end
        while start > 0 and raw[start - 1] == 0x5C:  # the backslashes before the quote
            start -= 1
        names -= (end + 1 - start) % 2
    return names


def _members(body: Any) -> int:
    """How many members the objects of *body* hold, all levels (no recursion)."""
    count = 0
    stack = [body]
    while stack:
        value = stack.pop()
        if type(value) is dict:
            count += len(value)
            value = value.values()
        elif type(value) is not list:
            continue
        for item in value:
            if type(item) is dict or type(item) is list:
                stack.append(item)
    return count


#: The deepest nesting a body forwarded with the gateway's edits may have: what
#: orjson writes (it reads up to 1024 levels). Appending the edits to the
#: client's bytes does not re-encode them, but such a body is refused as it was
#: when it was re-encoded.
MAX_EDITED_DEPTH = 254


def could_nest_deeper(raw: bytes, levels: int = MAX_EDITED_DEPTH) -> bool:
    """Whether the JSON *raw* has more brackets and braces than *levels*: if
    not, it cannot nest deeper (two scans in C, against a walk in Python)."""
    return raw.count(b"[") + raw.count(b"{") > levels


def nested_deeper(body: Any, levels: int = MAX_EDITED_DEPTH) -> bool:
    """Whether *body* nests objects and arrays more than *levels* deep (the body
    itself is the first level; no recursion)."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > levels:
            return True
        for item in value.values() if type(value) is dict else value:
            if type(item) is dict or type(item) is list:
                stack.append((item, depth + 1))
    return False


def _no_duplicates(raw: bytes, body: Any) -> bool:
    """Whether the valid JSON *raw*, parsed into *body* (orjson: the last of
    duplicate names wins), has no duplicate member name, without a second parse:
    :func:`_names_in` counts *raw*'s members, and a duplicate leaves
    *body* with fewer members than that. ``False``: a name repeats (or *body* is
    not *raw*'s parse: the caller parses again)."""
    return _names_in(raw) == _members(body)


def ambiguous_names(
    raw: bytes, body: dict[str, Any], spec: Names = CHAT_NAMES, *, unique: bool | None = None
) -> str | None:
    """The first member name an upstream could read differently from the gateway:
    a duplicate anywhere in *raw*, or a case variant among the names the gateway
    reads in *body* (parsed from *raw*; *spec* says which). ``None``: nothing
    ambiguous. *unique*: :func:`_no_duplicates` as found on *raw*'s parse before
    it was changed (``None``: found here, on *body*)."""
    if unique is None:
        unique = _no_duplicates(raw, body)
    if unique:
        return _case_variant(body, spec, "")
    try:
        _UNIQUE_PAIRS.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except _Duplicate as exc:
        return exc.name
    except (ValueError, RecursionError):
        pass  # orjson accepted the body; the stdlib parser's own limits are not ours
    return _case_variant(body, spec, "")


_T = TypeVar("_T")


def content_type_ok(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == _JSON or (
                media.startswith(b"application/") and media.endswith(b"+json")
            )
    return True  # absent: judged by the body


def parse_object(raw: bytes) -> dict[str, Any]:
    """*raw* as a JSON object: 400 ``invalid_json`` or ``invalid_request`` otherwise."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidJson() from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return body


def refuse_ambiguous(
    raw: bytes, body: dict[str, Any], spec: Names, *, unique: bool | None = None
) -> None:
    """400 ``ambiguous_field`` for a member name an upstream could read differently
    from the gateway (issue 10: what is checked is what is sent)."""
    ambiguous = ambiguous_names(raw, body, spec, unique=unique)
    if ambiguous is not None:
        raise AmbiguousField(
            f"The member name '{ambiguous[:100]}' is a duplicate or a case variant of "
            "a field this gateway checks; send each field once, spelled exactly",
            param=ambiguous[:100],
        )


def parse_unambiguous(
    raw: bytes,
    spec: Names = CHAT_NAMES,
    validate: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Parse *raw* as a JSON object, check it with *validate* and refuse names an
    upstream could read differently (:func:`refuse_ambiguous`). Linear in the
    body's size: run it through :func:`off_loop`."""
    body = parse_object(raw)
    # Counted before *validate* may change the body.
    unique = _no_duplicates(raw, body)
    if validate is not None:
        validate(body)
    refuse_ambiguous(raw, body, spec, unique=unique)
    return body


async def off_loop(
    raw: bytes, executor: Executor | None, work: Callable[..., _T], *args: Any
) -> _T:
    """``work(*args)``: inline for a body *raw* of at most the inline size, else in
    *executor* (the tokenizer threads), so nothing that grows with a body runs on
    the event loop (issue 10)."""
    if len(raw) <= counting.INLINE_BODY_BYTES:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, work, *args)


async def read_body(receive: Receive) -> bytes:
    try:
        return await _receive_body(receive)
    except HTTPException as exc:
        # The size-limit middleware stops a streamed body mid-way from receive().
        if exc.status_code == 413:
            raise PayloadTooLarge(str(exc.detail)) from None
        raise


async def _receive_body(receive: Receive) -> bytes:
    message: Message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)

"""Token counting with the tiktoken encodings bundled in the package.

Input: :func:`count_chat_input` counts a Chat Completions request the way
OpenAI bills its ``prompt_tokens``; :func:`measure_chat_input` and
:func:`count_chat_input_async` do the same under a size cap, the latter off
the event loop for large prompts. Output: :class:`OutputCounter` counts
generated text as it streams and says where to cut it at a token limit.

Encodings are built once by :meth:`Encoders.load` from the ``.tiktoken``
files in ``aigw/encodings`` (the exact files tiktoken downloads, checked
against the same SHA-256, with the same regex and special tokens as tiktoken's
``openai_public.py``), so counting never touches the network.

How a request is counted
------------------------
Per OpenAI's cookbook "How to count tokens with tiktoken"
(openai/openai-cookbook, ``examples/How_to_count_tokens_with_tiktoken.ipynb``),
for current models (gpt-3.5-turbo-0125, gpt-4, gpt-4o, gpt-4o-mini and later):

* every message costs 3 tokens plus the tokens of its role and its content;
  a ``name`` costs its tokens plus 1; every reply is primed with 3 tokens.

Tool and function definitions are rendered the way OpenAI feeds them to the
model, a TypeScript-like ``namespace functions { type f = (_: {...}) => any; }``
block, and counted with the empirical constants established by
hmarr/openai-chat-tokens (definitions + 9; -4 and a newline appended to the
first system message when there is a system message; ``function`` role
messages -2; an assistant ``function_call`` +3). Those rules reproduce the
figures the cookbook reports from the OpenAI API exactly, for both encodings
(see ``tests/proxy/test_tokens.py``), and they also handle nested objects,
arrays and optional parameters, which the cookbook's per-property constants do
not. Where OpenAI publishes nothing, the estimate is stated where it is made:

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
* Images: OpenAI's published per-model rates (see :func:`image_tokens`).
  ``input_audio`` and ``file`` parts are not counted (they cannot be priced
  without decoding the media).

Text is always encoded with ``encode_ordinary``: a client sending
``<|endoftext|>`` gets it counted as ordinary text, never as a special token.

Size cap
--------
Tokenizing costs CPU linear in the text (about 50 MB/s). Above
``max_chars`` characters of text, :func:`measure_chat_input` stops tokenizing
and returns a *lower bound* (:class:`InputCount` with ``exact=False``): no
token of either encoding decodes to more than 128 bytes, so a text of ``c``
characters is at least ``ceil(c / 128)`` tokens. A text crossing the cap is
split where a newline is followed by a letter, a place no regex pre-token of
either encoding spans, so its head is counted exactly and only its tail is
bounded. A request whose lower bound already exceeds a limit is provably
over it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import math
import struct
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import regex
import tiktoken

from aigw.encodings import CL100K_BASE, O200K_BASE, encoding_for_model

__all__ = [
    "DEFAULT_MAX_TOKENIZE_CHARS",
    "INLINE_TOKENIZE_CHARS",
    "Encoders",
    "InputCount",
    "OutputCounter",
    "count_chat_input",
    "count_chat_input_async",
    "encoding_name_for_model",
    "image_tokens",
    "load_encoding",
    "measure_chat_input",
    "render_functions",
]

# ---------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------


_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    filename: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


# Pattern strings and special tokens as in tiktoken's tiktoken_ext/openai_public.py;
# the hashes are its expected_hash values (the files are the ones it downloads).
_SPECS: Final[Mapping[str, _EncodingSpec]] = {
    CL100K_BASE: _EncodingSpec(
        filename="cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    O200K_BASE: _EncodingSpec(
        filename="o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

# The longest token of each encoding, in bytes (checked by a test): a text of
# c characters (>= c bytes) is at least ceil(c / 128) tokens.
_MAX_TOKEN_BYTES: Final = 128


def _encodings_dir() -> Path:
    return Path(str(resources.files("aigw") / "encodings"))


def _parse_tiktoken_bpe(data: bytes) -> dict[bytes, int]:
    # The format tiktoken.load.load_tiktoken_bpe reads: "<base64 token> <rank>" lines.
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_encoding(name: str, directory: Path | None = None) -> tiktoken.Encoding:
    """Build the named encoding (``cl100k_base`` or ``o200k_base``) from the
    bundled file, after checking its SHA-256. Never downloads.

    The file is read and parsed here rather than through
    ``tiktoken.load.load_tiktoken_bpe``, which skips the hash check when
    tiktoken's cache is disabled (``TIKTOKEN_CACHE_DIR=""``), copies the file
    into that cache otherwise, and fails when the cache folder is not
    writable. The format and the resulting ranks are the same (a test
    compares them with tiktoken's own loader).
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoding {name!r}; bundled: {', '.join(_SPECS)}")
    path = (directory or _encodings_dir()) / spec.filename
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ValueError(f"{path}: hash mismatch, expected SHA-256 {spec.sha256}")
    encoding = tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=_parse_tiktoken_bpe(data),
        special_tokens=dict(spec.special_tokens),
    )
    # The Rust core holds its own copy of the ranks; the Python dict is kept only
    # for pickling an Encoding by value, which aigw never does. Dropping it saves
    # ~40 MB per process (both encodings).
    encoding._mergeable_ranks = {}
    return encoding


def encoding_name_for_model(model: str) -> str:
    """The encoding to count *model* with when the operator named none (SPEC §1)."""
    return encoding_for_model(model)


class Encoders:
    """The bundled encodings of a process, each built once.

    Holds one :class:`tiktoken.Encoding` per loaded name and a small thread
    pool for tokenizing large prompts off the event loop (kept apart from the
    loop's default executor, which also resolves DNS for upstream calls).
    Thread-safe: encodings are immutable and tiktoken encodes concurrently.

    An encoding may also be loaded on first use (:meth:`aget`): a process then
    holds only the encodings its models count with (o200k_base takes ~45 MB,
    cl100k_base ~22 MB).
    """

    __slots__ = ("_encodings", "_executor", "_loader", "_loading")

    def __init__(
        self,
        encodings: Mapping[str, tiktoken.Encoding],
        *,
        offload_workers: int = 2,
        loader: Callable[[str], tiktoken.Encoding] | None = None,
    ) -> None:
        self._encodings = dict(encodings)
        self._executor = ThreadPoolExecutor(
            max_workers=offload_workers, thread_name_prefix="aigw-tokenize"
        )
        self._loader = loader or load_encoding
        self._loading: dict[str, asyncio.Future[tiktoken.Encoding]] = {}

    async def aget(self, name: str) -> tiktoken.Encoding:
        """The encoding called *name*, loaded off the event loop on first use
        (concurrent first uses share one load); ``KeyError`` when not bundled."""
        encoding = self._encodings.get(name)
        if encoding is not None:
            return encoding
        if name not in _SPECS:
            raise KeyError(name)
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(asyncio.to_thread(self._loader, name))
            self._loading[name] = loading
        try:
            encoding = await asyncio.shield(loading)
        finally:
            if loading.done():
                self._loading.pop(name, None)
        self._encodings[name] = encoding
        return encoding

    @classmethod
    def load(cls, directory: Path | None = None, *, offload_workers: int = 2) -> Encoders:
        """Load every bundled encoding (about a second of CPU; do it once)."""
        return cls(
            {name: load_encoding(name, directory) for name in _SPECS},
            offload_workers=offload_workers,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._encodings)

    @property
    def executor(self) -> Executor:
        """Where :func:`count_chat_input_async` should tokenize large prompts."""
        return self._executor

    def get(self, name: str) -> tiktoken.Encoding:
        """The encoding called *name*; ``KeyError`` when it is not bundled."""
        return self._encodings[name]

    def for_model(self, model: str, encoding: str | None = None) -> tiktoken.Encoding:
        """The encoding for *model*: *encoding* when configured, else by name."""
        return self._encodings[encoding or encoding_name_for_model(model)]

    def close(self) -> None:
        """Stop the tokenizer threads (waits for running jobs)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------
# Input counting
# ---------------------------------------------------------------------------

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
_SCHEMA_DEPTH = 32


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


def measure_chat_input(
    request_body: Mapping[str, Any],
    encoding: tiktoken.Encoding,
    *,
    max_chars: int = DEFAULT_MAX_TOKENIZE_CHARS,
) -> InputCount:
    """Like :func:`count_chat_input`, but tokenizes at most *max_chars*
    characters of text; beyond that the count is a lower bound."""
    return _count(_collect(request_body), encoding, max_chars)


async def count_chat_input_async(
    request_body: Mapping[str, Any],
    encoding: tiktoken.Encoding,
    *,
    max_chars: int = DEFAULT_MAX_TOKENIZE_CHARS,
    inline_chars: int = INLINE_TOKENIZE_CHARS,
    executor: Executor | None = None,
) -> InputCount:
    """:func:`measure_chat_input` without stalling the event loop.

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
        tokens += -(-(len(text) - cut) // _MAX_TOKEN_BYTES)
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

    functions = _function_definitions(body)
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
            fixed += _image_part(part.get("image_url"), model)
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
        texts.append(_compact_json(schema))
    return 0


def _compact_json(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return ""


# ---------------------------------------------------------------------------
# Tool / function definitions
# ---------------------------------------------------------------------------


def _function_definitions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    functions: list[Mapping[str, Any]] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
                functions.append(tool["function"])
    legacy = body.get("functions")
    if isinstance(legacy, list):
        functions.extend(f for f in legacy if isinstance(f, Mapping))
    return functions


def render_functions(functions: Iterable[Mapping[str, Any]]) -> str:
    """Function definitions as OpenAI shows them to the model: a TypeScript
    namespace, one ``type name = (_: {...}) => any;`` per function, with
    descriptions as ``//`` comments and optional parameters marked ``?``."""
    lines = ["namespace functions {", ""]
    for function in functions:
        name = function.get("name")
        name = name if isinstance(name, str) else ""
        description = function.get("description")
        if isinstance(description, str) and description:
            lines.append(f"// {description}")
        parameters = function.get("parameters")
        if not isinstance(parameters, Mapping):
            parameters = {}
        properties = parameters.get("properties")
        if isinstance(properties, Mapping) and properties:
            lines.append(f"type {name} = (_: {{")
            lines.append(_render_properties(parameters, 0, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _render_properties(schema: Mapping[str, Any], indent: int, depth: int) -> str:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return ""
    required = schema.get("required")
    required = required if isinstance(required, list) else ()
    pad = " " * indent
    lines = []
    for name, prop in properties.items():
        prop = prop if isinstance(prop, Mapping) else {}
        description = prop.get("description")
        if isinstance(description, str) and description:
            lines.append(f"{pad}// {description}")
        mark = "" if name in required else "?"
        lines.append(f"{pad}{name}{mark}: {_render_type(prop, indent, depth + 1)},")
    return "\n".join(lines)


def _render_type(schema: Mapping[str, Any], indent: int, depth: int) -> str:
    if depth > _SCHEMA_DEPTH:
        # Absurdly deep schemas: count their JSON rather than recurse further.
        return _compact_json(schema)
    enum = schema.get("enum")
    kind = schema.get("type")
    if isinstance(enum, list) and enum:
        if kind == "string" or all(isinstance(v, str) for v in enum):
            return " | ".join(f'"{v}"' for v in enum)
        return " | ".join(_compact_json(v) for v in enum)
    if "const" in schema:
        return _compact_json(schema["const"])
    if isinstance(kind, list):
        return " | ".join(_render_type({**schema, "type": k}, indent, depth + 1) for k in kind)
    for union in ("anyOf", "oneOf"):
        options = schema.get(union)
        if isinstance(options, list) and options:
            return " | ".join(
                _render_type(o if isinstance(o, Mapping) else {}, indent, depth + 1)
                for o in options
            )
    if kind == "string":
        return "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "object":
        return "\n".join(("{", _render_properties(schema, indent + 2, depth + 1), "}"))
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, Mapping):
            return f"{_render_type(items, indent, depth + 1)}[]"
        return "any[]"
    return "any"


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TileRate:
    """``base`` tokens, plus ``tile`` per 512-px tile in high detail."""

    base: int
    tile: int


@dataclass(frozen=True, slots=True)
class _PatchRate:
    """32-px patches (at most 1536) times ``multiplier``."""

    multiplier: float


# OpenAI's "Images and vision" guide (platform.openai.com/docs/guides/images-vision,
# "Calculating costs"), by model-name prefix, most specific first. Unknown
# models (local servers behind an OpenAI-compatible API) get gpt-4o's rates.
_IMAGE_RATES: Final[tuple[tuple[str, _TileRate | _PatchRate], ...]] = (
    ("gpt-4.1-mini", _PatchRate(1.62)),
    ("gpt-4.1-nano", _PatchRate(2.46)),
    ("gpt-5-mini", _PatchRate(1.62)),
    ("gpt-5-nano", _PatchRate(2.46)),
    ("o4-mini", _PatchRate(1.72)),
    ("gpt-4o-mini", _TileRate(2833, 5667)),
    ("gpt-5", _TileRate(70, 140)),
    ("o1", _TileRate(75, 150)),
    ("o3", _TileRate(75, 150)),
    ("computer-use-preview", _TileRate(65, 129)),
)
_DEFAULT_IMAGE_RATE: Final = _TileRate(85, 170)

# When the size of an image is unknown (a remote URL, or a data URL whose
# header we cannot read) we assume a 1024x1024 image: in high detail that is
# 4 tiles (765 tokens on gpt-4o), the common case for photos and screenshots.
# Fetching remote images just to count them would put a network round trip
# (and an SSRF surface) on the request path.
UNKNOWN_IMAGE_SIZE: Final = (1024, 1024)


def image_tokens(width: int, height: int, detail: str, model: str) -> int:
    """Tokens OpenAI bills for one image of *width* x *height* pixels.

    Tile models: ``low`` costs the base; ``high`` (and ``auto``, counted as
    ``high`` since that is what the model may choose) scales the image to fit
    2048x2048, then its short side down to 768, and adds a tile rate per
    512-px tile. Patch models count 32-px patches, scaled to at most 1536,
    times a multiplier, whatever the detail.
    """
    rate = _image_rate(model)
    if isinstance(rate, _PatchRate):
        return math.ceil(_patches(width, height) * rate.multiplier)
    if detail == "low":
        return rate.base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return rate.base + rate.tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= 1536:
        return patches
    shrink = math.sqrt(32 * 32 * 1536 / (width * height))
    w, h = width * shrink / 32, height * shrink / 32
    shrink *= min(math.floor(w) / w, math.floor(h) / h)
    return min(1536, math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32))


def _image_rate(model: str) -> _TileRate | _PatchRate:
    name = model.rsplit("/", 1)[-1].lower()
    for prefix, rate in _IMAGE_RATES:
        if name.startswith(prefix):
            return rate
    return _DEFAULT_IMAGE_RATE


def _image_part(image: object, model: str) -> int:
    url: object
    detail: object = "auto"
    if isinstance(image, str):
        url = image
    elif isinstance(image, Mapping):
        url, detail = image.get("url"), image.get("detail") or "auto"
    else:
        return 0
    size = _data_url_size(url) if isinstance(url, str) else None
    width, height = size or UNKNOWN_IMAGE_SIZE
    return image_tokens(width, height, detail if isinstance(detail, str) else "auto", model)


# Base64 read for an image header: PNG, GIF and WebP sizes sit in the first
# bytes; a JPEG's frame header follows its EXIF block, so it may need more.
# Images whose header lies further in get the default size.
_IMAGE_HEADER_B64 = (64, 1 << 17)


def _data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 ``data:`` URL image, read from its header."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 256)
    if comma < 0 or not url[:comma].endswith(";base64"):
        return None
    for length in _IMAGE_HEADER_B64:
        chunk = url[comma + 1 : comma + 1 + length]
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            head = base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError):
            return None
        size = _image_size(head)
        if size is not None:
            return size if size[0] > 0 and size[1] > 0 else None
        if head[:2] != b"\xff\xd8" or len(chunk) < length:
            return None
    return None


def _image_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return width, height
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG), CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    end = len(head)
    while i + 4 <= end:
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > end:
                return None
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


# ---------------------------------------------------------------------------
# Output counting
# ---------------------------------------------------------------------------

# A channel's uncommitted tail is re-split once it reaches this many chars.
_COMMIT_CHARS = 256
# The regex pre-tokens kept uncommitted: appending text can re-split the last
# one or two pre-tokens (e.g. "A'" + "s" -> "A's"), never earlier ones.
_UNSTABLE_PIECES = 3
# A tail still longer than this after re-splitting is one giant pre-token
# (e.g. a model repeating "....."); it is committed at a token boundary.
_MAX_UNSTABLE_CHARS = 1024
_FORCED_KEEP_BYTES = 2 * _MAX_TOKEN_BYTES  # beyond the reach of any re-merge at the end


class _Channel:
    __slots__ = ("committed", "next_commit", "tail", "tail_bytes", "tail_tokens")

    def __init__(self) -> None:
        self.committed = 0  # exact tokens of the text before `tail`
        self.tail = ""  # text after the last stable pre-token boundary
        self.tail_bytes = 0  # UTF-8 length of `tail`: an upper bound of its tokens
        self.tail_tokens: int | None = 0  # exact tokens of `tail`, None when stale
        self.next_commit = _COMMIT_CHARS


@functools.lru_cache(maxsize=8)
def _piece_pattern(pat_str: str) -> regex.Pattern[str]:
    return regex.compile(pat_str)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _scrub(text: str) -> str:
    """*text* with lone surrogates replaced, as tiktoken does before encoding."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class OutputCounter:
    """Counts generated tokens as they stream, and cuts at a limit.

    Text arrives in *channels*: the message content, and the arguments (and
    name) of each tool call, which the model generates as separate texts. The
    count of a channel is ``len(encoding.encode_ordinary(all text accepted on
    it))``; :attr:`count` is the sum over channels.

    :meth:`feed` accepts as much of a delta as keeps :attr:`count` within
    ``limit`` (``None`` or 0: unlimited), and reports when text had to be cut;
    the cut falls on a token boundary, so the relayed text is exactly the
    first ``limit`` tokens in all but rare cases where a token prefix
    re-encodes into fewer tokens (then it is the longest prefix that fits).

    Cost per delta is independent of how much was generated: BPE never merges
    across the pre-tokens the encoding's regex splits text into, and appending
    text can only re-split the last pre-tokens. Each channel keeps an exact
    count of its text up to a stable pre-token boundary and re-encodes only
    the short tail after it; every ~256 characters the tail is re-split and
    all but its last three pre-tokens are committed. Far from the limit the
    tail is not even encoded: its UTF-8 length bounds its tokens. One caveat:
    a single pre-token longer than 4096 characters (a model stuck repeating
    one punctuation character) is committed at token boundaries, where the
    count could in principle differ from one-shot encoding by a token.

    Lone surrogates in deltas are replaced with U+FFFD (as tiktoken does);
    the accepted text returned is the scrubbed text. Not thread-safe.
    """

    __slots__ = (
        "_channels",
        "_committed",
        "_encode",
        "_encoding",
        "_exhausted",
        "_limit",
        "_pattern",
        "_tail_bytes",
    )

    def __init__(self, encoding: tiktoken.Encoding, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 (0 or None: unlimited)")
        self._encoding = encoding
        self._encode = encoding.encode_ordinary
        self._pattern = _piece_pattern(encoding._pat_str)
        self._limit = limit or None
        self._channels: dict[Hashable, _Channel] = {}
        self._committed = 0  # sum of channel.committed
        self._tail_bytes = 0  # sum of channel.tail_bytes
        self._exhausted = False

    @property
    def limit(self) -> int | None:
        return self._limit

    @property
    def exhausted(self) -> bool:
        """Whether text was cut: the response must end here (``length``)."""
        return self._exhausted

    @property
    def count(self) -> int:
        """Exact tokens accepted so far, over all channels."""
        return self._committed + sum(self._tail_tokens(ch) for ch in self._channels.values())

    def channel_count(self, channel: Hashable = "content") -> int:
        """Exact tokens accepted so far on *channel*."""
        ch = self._channels.get(channel)
        return 0 if ch is None else ch.committed + self._tail_tokens(ch)

    def feed(self, text: str, channel: Hashable = "content") -> tuple[str, bool]:
        """Count *text* arriving on *channel*.

        Returns ``(accepted, reached_limit)``: ``accepted`` is the prefix of
        *text* to relay (all of it unless the limit cut it); ``reached_limit``
        is true once text has been cut, and then every later feed accepts
        nothing.
        """
        if self._exhausted:
            return "", True
        if not text:
            return "", False
        text = _scrub(text)
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel()
        size = _utf8_len(text)
        limit = self._limit
        if limit is None or self._committed + self._tail_bytes + size <= limit:
            self._append(ch, text, size, None)
            return text, False

        budget = limit - self._committed
        for other in self._channels.values():
            if other is not ch:
                budget -= self._tail_tokens(other)
        joined = ch.tail + text
        tokens = self._encode(joined)
        if len(tokens) <= budget:
            self._append(ch, text, size, len(tokens))
            return text, False
        accepted, count = self._cut(ch.tail, text, tokens, budget)
        self._append(ch, accepted, _utf8_len(accepted), count)
        self._exhausted = True
        return accepted, True

    def _tail_tokens(self, ch: _Channel) -> int:
        if ch.tail_tokens is None:
            ch.tail_tokens = len(self._encode(ch.tail))
        return ch.tail_tokens

    def _append(self, ch: _Channel, text: str, size: int, tail_tokens: int | None) -> None:
        ch.tail += text
        ch.tail_bytes += size
        self._tail_bytes += size
        ch.tail_tokens = tail_tokens
        if len(ch.tail) >= ch.next_commit:
            self._commit(ch)

    def _commit(self, ch: _Channel) -> None:
        """Move the stable head of the channel's tail into its committed count."""
        tail = ch.tail
        starts = [m.start() for m in self._pattern.finditer(tail)]
        cut = starts[-_UNSTABLE_PIECES] if len(starts) > _UNSTABLE_PIECES else 0
        if len(tail) - cut > _MAX_UNSTABLE_CHARS:
            self._force_commit(ch)
            return
        if cut:
            total = self._tail_tokens(ch)
            kept = tail[cut:]
            kept_tokens = len(self._encode(kept))
            self._set_tail(ch, kept, kept_tokens, total - kept_tokens)
        ch.next_commit = max(_COMMIT_CHARS, 2 * len(ch.tail))

    def _force_commit(self, ch: _Channel) -> None:
        tokens = self._encode(ch.tail)
        data = ch.tail.encode("utf-8")
        keep_from = len(data) - _FORCED_KEEP_BYTES
        offset = 0
        k = 0
        for piece in self._encoding.decode_tokens_bytes(tokens):
            if offset + len(piece) > keep_from:
                break
            offset += len(piece)
            k += 1
        # Step back off a split UTF-8 sequence (continuation byte at offset).
        while k and offset < len(data) and data[offset] & 0xC0 == 0x80:
            k -= 1
            offset -= len(self._encoding.decode_single_token_bytes(tokens[k]))
        if k:
            kept = data[offset:].decode("utf-8")
            self._set_tail(ch, kept, len(tokens) - k, k)
        ch.next_commit = _MAX_UNSTABLE_CHARS

    def _set_tail(self, ch: _Channel, kept: str, kept_tokens: int, committed: int) -> None:
        size = _utf8_len(kept)
        self._tail_bytes += size - ch.tail_bytes
        self._committed += committed
        ch.committed += committed
        ch.tail, ch.tail_bytes, ch.tail_tokens = kept, size, kept_tokens

    def _cut(self, tail: str, text: str, tokens: list[int], budget: int) -> tuple[str, int]:
        """The longest prefix of *text* ending on a token boundary of
        ``tail + text`` with ``tokens(tail + prefix) <= budget``, and that count."""
        encode = self._encode
        data = (tail + text).encode("utf-8")
        ends = [0]
        for piece in self._encoding.decode_tokens_bytes(tokens):
            ends.append(ends[-1] + len(piece))

        def candidate(j: int) -> tuple[str, int]:
            # The first j tokens, minus any split trailing character.
            chars = len(data[: ends[j]].decode("utf-8", errors="ignore"))
            prefix = text[: max(0, chars - len(tail))]
            return prefix, len(encode(tail + prefix))

        j = min(budget, len(tokens) - 1)
        best = candidate(j)
        while best[1] > budget and j > 0:
            j -= 1
            best = candidate(j)
        # A prefix can re-encode into fewer tokens than it was cut from; take
        # more while it still fits.
        while j + 1 < len(tokens):
            grown = candidate(j + 1)
            if grown[1] > budget:
                break
            j, best = j + 1, grown
        return best

"""Anthropic's Messages API ⇄ Chat Completions, the reverse of the ``anthropic`` adapter.

``POST /v1/messages`` is admitted, counted, cut and relayed by the same stages as
``/v1/chat/completions``, which speak Chat Completions inside. This module turns
a Messages request into a Chat Completions one (for counting, and for providers
that are not Anthropic) and the relay's Chat Completions answer back into a
Message, whole or as the Messages event stream.

Request mapping (Messages → Chat Completions):

=====================================  ==========================================
Messages                               Chat Completions
=====================================  ==========================================
``system`` (string or text blocks)     a first ``system`` message
``text`` block                         text (a string, or a ``text`` part)
``image`` block (base64 / url)         ``image_url`` part (``data:`` URL / URL)
assistant ``tool_use`` block           ``tool_calls`` entry (input as JSON text)
user ``tool_result`` block             a ``tool`` message (its text)
``tools`` (custom: name, description,  ``tools`` (``function``: name, description,
input_schema)                          parameters)
``tool_choice`` auto / any / tool /    ``auto`` / ``required`` / the named
none                                   function / ``none``
``disable_parallel_tool_use``          ``parallel_tool_calls: false``
``stop_sequences``                     ``stop``
``max_tokens``                         ``max_tokens`` (``max_completion_tokens``
                                       for models that take only that)
``temperature``, ``top_p``, ``stream``  the same
``metadata.user_id``                   ``user``
=====================================  ==========================================

Dropped (no Chat Completions equivalent): ``top_k``, ``thinking``,
``cache_control``, ``service_tier``, ``container``, ``mcp_servers``,
``document``/``search_result``/``thinking`` blocks and server tools
(``web_search_…`` and other typed tools). Answers: ``content`` text → a ``text``
block, ``tool_calls`` → ``tool_use`` blocks, ``finish_reason`` ``stop`` →
``end_turn``, ``length`` → ``max_tokens``, ``tool_calls``/``function_call`` →
``tool_use``, ``content_filter`` → ``refusal``; ``usage`` prompt/completion →
input/output tokens. Which stop sequence matched is not known after the
translation: ``stop_sequence`` is always ``null``. An ``anthropic`` upstream is
sent the Messages body itself, dropped parts included: those count as their
JSON text (:func:`untranslated`), so nothing forwarded goes uncounted.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from aigw.proxy.sse import DONE_DATA, SSEDecoder

# OpenAI finish_reason → Anthropic stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# HTTP status → Anthropic's error type (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    """Anthropic's error shape; ``code`` (the gateway's stable code) is an extra
    field the SDKs ignore and scripts can test."""
    error: dict[str, Any] = {"type": error_type_for(status), "message": message}
    if code is not None:
        error["code"] = code
    return orjson.dumps({"type": "error", "error": error})


def error_from_openai(status: int, body: bytes) -> bytes:
    """An error in OpenAI's envelope (what the shared stages render) in Anthropic's shape."""
    message, code = f"HTTP {status}", None
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            raw_code = error.get("code")
            code = str(raw_code) if raw_code is not None else None
    return error_body(status, message, code)


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# -- request: Messages → Chat Completions -------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(content: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []

    def flush() -> None:
        if parts:
            out.append({"role": "user", "content": list(parts)})
            parts.clear()

    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            part = _image_part(block)
            if part is not None:
                parts.append(part)
        elif kind == "tool_result":
            flush()  # a tool message answers the assistant turn before it
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": str(block.get("tool_use_id", "")),
                    "content": _text_of(block.get("content")),
                }
            )
    flush()


def _assistant_turn(content: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        message["tool_calls"] = calls
    out.append(message)


def _tool(tool: Any) -> dict[str, Any] | None:
    # Custom tools have no "type" (or "custom"); typed server tools have no equivalent.
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        return None
    function: dict[str, Any] = {
        "name": tool.get("name"),
        "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def to_chat_request(body: dict[str, Any], max_tokens_field: str) -> dict[str, Any]:
    """The Chat Completions request a (validated) Messages request stands for."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for message in body["messages"]:
        if message["role"] == "user":
            _user_turn(message["content"], messages)
        else:
            _assistant_turn(message["content"], messages)
    request: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        request[max_tokens_field] = body["max_tokens"]
    for field in ("temperature", "top_p", "stream"):
        if body.get(field) is not None:
            request[field] = body[field]
    if body.get("stop_sequences"):
        request["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request["user"] = metadata["user_id"]
    tools = [tool for tool in map(_tool, body.get("tools") or []) if tool is not None]
    if tools:
        request["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and tools:
        kind = choice.get("type")
        if kind == "any":
            request["tool_choice"] = "required"
        elif kind == "tool":
            request["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "none"):
            request["tool_choice"] = kind
        if choice.get("disable_parallel_tool_use") is True:
            request["parallel_tool_calls"] = False
    return request


# Top-level fields the translation maps (their text is in the chat request) and
# settings that hold no text while plain (numbers, booleans, short strings).
_MAPPED = frozenset(
    {"model", "messages", "system", "max_tokens", "temperature", "top_p", "stream"}
    | {"stop_sequences", "tools", "tool_choice"}
)
_SETTINGS = frozenset({"top_k", "thinking", "service_tier", "metadata"})
_USER_BLOCKS = frozenset({"text", "image", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use"})
_FREE_CHARS = 64


def _plain(value: Any, depth: int = 2) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return len(value) <= _FREE_CHARS
    if isinstance(value, dict) and depth > 0 and len(value) <= _FREE_CHARS:
        return all(len(k) <= _FREE_CHARS and _plain(v, depth - 1) for k, v in value.items())
    return False


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson writes at most 255 levels
        raise ValueError("nested too deeply") from None


def untranslated(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What :func:`to_chat_request` drops but a Messages upstream is sent as is,
    as chat messages holding its compact JSON text, so that it is counted
    (issue 10: the gateway never forwards text it did not count): unknown
    top-level fields, settings holding more than plain values, blocks the
    translation has no rule for (``document``, ``search_result``, ``thinking``,
    server-tool blocks, non-text ``tool_result`` content, non-text ``system``
    blocks) and typed (server) tools. Raises ``ValueError`` for a value too
    deeply nested to write."""
    texts: list[str] = []
    for name, value in body.items():
        if name in _MAPPED or (name in _SETTINGS and _plain(value)):
            continue
        texts.append(_json_text({name: value}))
    system = body.get("system")
    if isinstance(system, list):
        texts.extend(
            _json_text(block)
            for block in system
            if not (isinstance(block, dict) and block.get("type") == "text")
        )
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        kinds = _USER_BLOCKS if message.get("role") == "user" else _ASSISTANT_BLOCKS
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if not (isinstance(kind, str) and kind in kinds):
                texts.append(_json_text(block))
            elif kind == "tool_result" and isinstance(block.get("content"), list):
                texts.extend(
                    _json_text(part)
                    for part in block["content"]
                    if not (isinstance(part, dict) and part.get("type") == "text")
                )
            elif kind == "image" and _image_part(block) is None:
                texts.append(_json_text(block))
    for tool in body.get("tools") or ():
        if _tool(tool) is None:
            texts.append(_json_text(tool))
    return [{"role": "user", "content": text} for text in texts]


# -- answers: Chat Completions → Messages -----------------------------------------


def _usage(usage: Any, input_tokens: int) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return {
        "input_tokens": prompt if type(prompt) is int else input_tokens,
        "output_tokens": completion if type(completion) is int else 0,
    }


def _input_of(arguments: Any) -> Any:
    if not isinstance(arguments, str):
        return {}
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}  # cut mid-arguments: no complete input to give
    return value if isinstance(value, dict) else {}


def message_id(upstream_id: Any) -> str:
    text = str(upstream_id or "")
    return text if text.startswith("msg_") else "msg_" + (text or "aigw")


def to_message(completion: dict[str, Any], input_tokens: int) -> dict[str, Any]:
    """A non-streamed Message from a Chat Completions answer (its first choice)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = reply.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_aigw",
                "name": function.get("name") or "",
                "input": _input_of(function.get("arguments")),
            }
        )
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": _usage(completion.get("usage"), input_tokens),
    }


class MessageStream:
    """Chat Completions SSE bytes (as the relay writes them) → Messages events.

    Events: ``message_start``, then per content block ``content_block_start`` /
    ``content_block_delta``… / ``content_block_stop``, then ``message_delta``
    (``stop_reason``, ``usage``) and ``message_stop`` when the chunks end with
    ``[DONE]``; an error event becomes Anthropic's ``error`` event.
    """

    __slots__ = (
        "_block",
        "_block_kind",
        "_decoder",
        "_input_tokens",
        "_model",
        "_started",
        "_stop_reason",
        "_tools",
        "_usage",
    )

    def __init__(self, input_tokens: int, model: str) -> None:
        self._decoder = SSEDecoder()
        self._input_tokens = input_tokens
        self._model = model
        self._started = False
        self._block = -1  # the index of the open content block, -1: none
        self._block_kind: str | None = None
        self._tools: dict[Any, int] = {}  # tool_calls index -> content block index
        self._stop_reason: str | None = None
        self._usage: Any = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._decoder.feed(data):
            if event.data is None:
                out.append(event.raw)  # a comment keeps the connection alive
            elif event.data == DONE_DATA:
                out.append(self._finish())
            else:
                out.append(self._chunk(orjson.loads(event.data)))
        return b"".join(out)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> bytes:
        if self._block_kind is None:
            return b""
        self._block_kind = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        closed = self._close_block()
        self._block += 1
        self._block_kind = kind
        payload = {"type": "content_block_start", "index": self._block, "content_block": block}
        return closed + sse_event("content_block_start", payload)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self._block, "delta": delta}
        return sse_event("content_block_delta", payload)

    def _chunk(self, chunk: Any) -> bytes:
        if not isinstance(chunk, dict):
            return b""
        if "error" in chunk and not chunk.get("choices"):
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            payload = {
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": str(error.get("message") or "The upstream provider failed"),
                    "code": error.get("code"),
                },
            }
            return sse_event("error", payload)
        out: list[bytes] = []
        if not self._started:
            out.append(self._start(chunk))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Messages has one answer; n > 1 is not asked for
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._block_kind != "text":
                    out.append(self._open_block("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                index = call.get("index", 0)
                if index not in self._tools:
                    block: dict[str, Any] = {
                        "type": "tool_use",
                        "id": call.get("id") or f"toolu_aigw_{index}",
                        "name": function.get("name") or "",
                        "input": {},
                    }
                    out.append(self._open_block("tool_use", block))
                    self._tools[index] = self._block
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments and self._tools[index] == self._block:
                    out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            reason = choice.get("finish_reason")
            if reason is not None:
                self._stop_reason = STOP_REASONS.get(str(reason), "end_turn")
        return b"".join(out)

    def _finish(self) -> bytes:
        out = [] if self._started else [self._start({})]
        out.append(self._close_block())
        usage = _usage(self._usage, self._input_tokens)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None},
            "usage": usage,
        }
        out.append(sse_event("message_delta", delta))
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

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
JSON text (:func:`.request.untranslated`), so nothing forwarded goes uncounted.
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

"""Adapter for ``kind: anthropic`` providers: Chat Completions ⇄ the Messages API.

Clients keep speaking Chat Completions; requests are translated to
``POST {base_url}/messages`` and answers (whole or streamed) back, so the
relay's one stream loop counts, cuts and records them like any other.

Request mapping: ``system``/``developer`` messages become ``system``;
``user`` text and ``image_url`` parts become text and image blocks (``data:``
URLs as base64 sources, other URLs as URL sources); assistant ``tool_calls``
become ``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks;
``tools``/``tool_choice``, ``stop`` (→ ``stop_sequences``), ``temperature``,
``top_p``, ``stream`` and ``user`` (→ ``metadata.user_id``) carry over.
``max_tokens`` is required by Anthropic: the client's
``max_completion_tokens``/``max_tokens``, else the key's output limit (admission
injects it), else :data:`DEFAULT_MAX_TOKENS`. Fields without a
Messages equivalent are not sent (the Messages API refuses unknown fields).

Answer mapping: text blocks join into ``content``, ``tool_use`` blocks become
``tool_calls``; ``stop_reason`` ``end_turn``/``stop_sequence`` → ``stop``,
``max_tokens`` → ``length``, ``tool_use`` → ``tool_calls``; ``usage``
``input_tokens``/``output_tokens`` → ``prompt_tokens``/``completion_tokens``.
Thinking text becomes ``reasoning_content`` (the name DeepSeek, vLLM and
LiteLLM use), so it is counted and cut like any output, as Anthropic bills it;
signatures and redacted thinking are not relayed.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from yarl import URL

from aigw.errors import openai_error_body
from aigw.proxy.adapters.base import DONE_ITEM, StreamItem
from aigw.proxy.adapters.openai import _endpoint, wrap_error
from aigw.proxy.errors import UpstreamProtocolError
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.sse import SSEEvent

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
_COMMENT = StreamItem(b": ping\n\n", None)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _image_block(image: Any) -> dict[str, Any] | None:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        return None
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_content(content: Any) -> Any:
    if not isinstance(content, list):
        return _text(content)
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            block = _image_block(part.get("image_url"))
            if block is not None:
                blocks.append(block)
    return blocks


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            value = orjson.loads(raw or "{}")
        except orjson.JSONDecodeError:
            return {"arguments": raw}
        return value if isinstance(value, dict) else {"value": value}
    return raw if isinstance(raw, dict) else {}


def _append(messages: list[dict[str, Any]], role: str, content: Any) -> None:
    """Consecutive turns of one role merge: the Messages API alternates roles."""
    if isinstance(content, str):
        if not content:
            return
        content = [{"type": "text", "text": content}]
    if not content:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(content)
    else:
        messages.append({"role": role, "content": list(content)})


def to_messages_request(body: dict[str, Any]) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text(content))
        elif role == "user":
            _append(messages, "user", _user_content(content))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _text(content)
            if text:
                blocks.append({"type": "text", "text": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or "",
                        "name": function.get("name") or "",
                        "input": _arguments(function.get("arguments")),
                    }
                )
            _append(messages, "assistant", blocks)
        elif role in ("tool", "function"):
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id") or message.get("name") or "",
                "content": _text(content),
            }
            _append(messages, "user", [result])
    request: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        request["system"] = "\n\n".join(part for part in system if part)
    for field in ("temperature", "top_p", "stream"):
        if body.get(field) is not None:
            request[field] = body[field]
    stop = body.get("stop")
    if isinstance(stop, str):
        request["stop_sequences"] = [stop]
    elif isinstance(stop, list):
        request["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    if isinstance(body.get("user"), str):
        request["metadata"] = {"user_id": body["user"]}
    tools = [
        tool["function"]
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    if tools:
        request["tools"] = [
            {
                "name": function.get("name"),
                **({"description": function["description"]} if function.get("description") else {}),
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
            }
            for function in tools
        ]
        choice = body.get("tool_choice")
        if choice == "required":
            request["tool_choice"] = {"type": "any"}
        elif choice == "none":
            request["tool_choice"] = {"type": "none"}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            request["tool_choice"] = {"type": "tool", "name": choice["function"].get("name")}
        elif choice == "auto":
            request["tool_choice"] = {"type": "auto"}
    return request


def _usage(usage: Any, prompt: int | None = None) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return None
    input_tokens = usage.get("input_tokens", prompt)
    output_tokens = usage.get("output_tokens", 0)
    if not isinstance(input_tokens, int) or not isinstance(output_tokens, int):
        return None
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


class AnthropicStream:
    """Messages stream events → Chat Completions chunks, for one response."""

    __slots__ = ("_created", "_id", "_input_tokens", "_model", "_tools", "_usage")

    def __init__(self) -> None:
        self._id = "chatcmpl-anthropic"
        self._model = ""
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # content block index -> tool_calls index
        self._input_tokens: int | None = None
        self._usage: dict[str, int] | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> StreamItem:
        return StreamItem(
            None,
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            },
        )

    def items(self, event: SSEEvent) -> tuple[StreamItem, ...]:
        if event.data is None:
            return (StreamItem(event.raw, None),)
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream provider sent a malformed event") from None
        if not isinstance(data, dict):
            raise UpstreamProtocolError("The upstream provider sent a malformed event")
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return (self._chunk({"content": delta.get("text", "")}),)
            if delta.get("type") == "thinking_delta":
                return (self._chunk({"reasoning_content": delta.get("thinking", "")}),)
            if delta.get("type") == "input_json_delta":
                tool = self._tools.get(data.get("index", -1))
                if tool is not None:
                    call = {"index": tool, "function": {"arguments": delta.get("partial_json", "")}}
                    return (self._chunk({"tool_calls": [call]}),)
            return (_COMMENT,)  # signatures are not relayed
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = str(message.get("id") or self._id)
            self._model = str(message.get("model") or "")
            usage = message.get("usage") or {}
            if isinstance(usage.get("input_tokens"), int):
                self._input_tokens = usage["input_tokens"]
            return (self._chunk({"role": "assistant", "content": ""}),)
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                tool = self._tools[data.get("index", len(self._tools))] = len(self._tools)
                head = {
                    "index": tool,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return (self._chunk({"tool_calls": [head]}),)
            if block.get("type") == "text" and block.get("text"):
                return (self._chunk({"content": block["text"]}),)
            return (_COMMENT,)
        if kind == "message_delta":
            self._usage = _usage(data.get("usage"), self._input_tokens)
            reason = (data.get("delta") or {}).get("stop_reason")
            return (self._chunk({}, _FINISH.get(str(reason), "stop")),)
        if kind == "message_stop":
            usage = self._usage or _usage({}, self._input_tokens)
            chunk = self._chunk({})
            assert chunk.chunk is not None
            chunk.chunk["choices"] = []
            chunk.chunk["usage"] = usage
            return (chunk, DONE_ITEM)
        if kind == "error":
            error = data.get("error") or {}
            return (
                StreamItem(
                    None,
                    {"error": {"message": error.get("message"), "type": error.get("type")}},
                ),
            )
        return (_COMMENT,)  # ping, content_block_stop, and anything new


class AnthropicAdapter:
    kind = "anthropic"
    relays_raw = False

    def url(self, key: ResolvedKey, stream: bool = False) -> URL:
        return _endpoint(key.base_url, "/messages")

    def headers(self, key: ResolvedKey, request_id: str, stream: bool) -> dict[str, str]:
        assert key.key_code is not None
        return {
            "x-api-key": key.key_code,
            "anthropic-version": ANTHROPIC_VERSION,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "Accept-Encoding": "identity",
            "X-Request-Id": request_id,
        }

    def encode_request(self, body: dict[str, Any], raw: bytes, modified: bool) -> bytes:
        return orjson.dumps(to_messages_request(body))

    def new_stream(self) -> AnthropicStream:
        return AnthropicStream()

    def parse_response(self, body: bytes) -> dict[str, Any]:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream provider sent malformed JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise UpstreamProtocolError("The upstream provider sent an unexpected body")
        text: list[str] = []
        thinking: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in message["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text.append(str(block.get("text", "")))
            elif block.get("type") == "thinking":
                thinking.append(str(block.get("thinking", "")))
            elif block.get("type") == "tool_use":
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": orjson.dumps(block.get("input", {})).decode(),
                        },
                    }
                )
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
        if thinking:
            reply["reasoning_content"] = "".join(thinking)
        if calls:
            reply["tool_calls"] = calls
        completion: dict[str, Any] = {
            "id": message.get("id"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": message.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": reply,
                    "logprobs": None,
                    "finish_reason": _FINISH.get(str(message.get("stop_reason")), "stop"),
                }
            ],
        }
        usage = _usage(message.get("usage"))
        if usage is not None:
            completion["usage"] = usage
        return completion

    def error_envelope(self, body: bytes, status: int) -> tuple[bytes, str | None]:
        """``{"type": "error", "error": {"type", "message"}}`` in OpenAI's envelope."""
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("type") if isinstance(error.get("type"), str) else None
            body = openai_error_body(
                error["message"], code=code, error_type=code or "upstream_error"
            )
            return body, code
        return wrap_error(body, status), None

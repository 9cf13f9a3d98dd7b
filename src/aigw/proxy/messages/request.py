"""A Messages request as the Chat Completions request it becomes for a
non-Anthropic provider, and what of it that translation leaves out (which is
counted as its JSON text when the body goes to an Anthropic provider as sent).
"""

from __future__ import annotations

from typing import Any

import orjson

# OpenAI finish_reason → Anthropic stop_reason.


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

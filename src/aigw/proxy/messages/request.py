"""A Messages request as the Chat Completions request it becomes for a
non-Anthropic provider, and what of it that translation leaves out (which is
counted as its JSON text when the body goes to an Anthropic provider as sent).
"""

from __future__ import annotations

from typing import Any

import orjson

from aigw.proxy.counting.free import is_setting

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


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson writes at most 255 levels
        raise ValueError("nested too deeply") from None


# Per block kind: the keys the translation reads, and those free while plain
# (short ids, flags, cache_control); anything else in the block is counted.
_BLOCK_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text": (("type", "text"), ("cache_control", "citations")),
    "image": (("type", "source"), ("cache_control",)),
    "tool_result": (("type", "tool_use_id", "content"), ("is_error", "cache_control")),
    "tool_use": (("type", "id", "name", "input"), ("cache_control",)),
}
_SOURCE_KEYS = ("type", "media_type", "data", "url")
_TOOL_KEYS = ("type", "name", "description", "input_schema")


def _extra(obj: dict[str, Any], known: tuple[str, ...], free: tuple[str, ...] = ()) -> list[str]:
    """The JSON text of what of *obj* the translation does not read: keys not in
    *known*, and keys in *free* once they hold more than a short plain value."""
    return [
        _json_text({name: value})
        for name, value in obj.items()
        if name not in known
        and not (name in free and (value in (None, [], {}) or is_setting(value)))
    ]


def _block_extra(block: dict[str, Any]) -> list[str]:
    known, free = _BLOCK_KEYS[block["type"]]
    texts = _extra(block, known, free)
    source = block.get("source")
    if block["type"] == "image" and isinstance(source, dict):
        texts.extend(_extra(source, _SOURCE_KEYS))
    return texts


def untranslated(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What :func:`to_chat_request` drops but a Messages upstream is sent as is,
    as chat messages holding its compact JSON text, so that it is counted
    (issue 10: the gateway never forwards text it did not count): unknown
    top-level fields, settings holding more than plain values, blocks the
    translation has no rule for (``document`` blocks other than a base64 file,
    a url or a file id, which count as a chat ``file`` part; ``search_result``, ``thinking``,
    server-tool blocks, non-text ``tool_result`` content, non-text ``system``
    blocks), typed (server) tools, and at every level the keys of a known
    object it does not read (a message's, a block's, an image source's, a
    tool's, ``tool_choice``'s; ids, flags and ``cache_control`` while short and
    plain are free). Raises ``ValueError`` for a value too deeply nested to write."""
    texts: list[str] = []
    files: list[dict[str, Any]] = []
    for name, value in body.items():
        if name in _MAPPED or (name in _SETTINGS and is_setting(value)):
            continue
        texts.append(_json_text({name: value}))
    system = body.get("system")
    if isinstance(system, list):
        for block in system:
            if isinstance(block, dict) and block.get("type") == "text":
                texts.extend(_block_extra(block))
            else:
                texts.append(_json_text(block))
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        texts.extend(_extra(message, ("role", "content")))
        content = message.get("content")
        if not isinstance(content, list):
            continue
        kinds = _USER_BLOCKS if message.get("role") == "user" else _ASSISTANT_BLOCKS
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "document" and (file := _document_file(block)) is not None:
                # A PDF (base64) is bounded like a chat file part; one by url or
                # file id cannot be seen, so it is not countable (counting/files.py).
                files.append({"role": "user", "content": [{"type": "file", "file": file}]})
                source = block["source"]
                texts.extend(_extra(block, ("type", "source"), ("cache_control",)))
                texts.extend(_extra(source, ("type", "media_type", "data", "url", "file_id")))
                continue
            if not (isinstance(kind, str) and kind in kinds):
                texts.append(_json_text(block))
                continue
            if kind == "image" and _image_part(block) is None:
                texts.append(_json_text(block))
                continue
            texts.extend(_block_extra(block))
            if kind == "tool_result" and isinstance(block.get("content"), list):
                for part in block["content"]:
                    if isinstance(part, dict) and part.get("type") == "text":
                        texts.extend(_block_extra(part))
                    else:
                        texts.append(_json_text(part))
    tools = [tool for tool in body.get("tools") or () if _tool(tool) is None]
    texts.extend(_json_text(tool) for tool in tools)
    for tool in body.get("tools") or ():
        if _tool(tool) is not None:
            texts.extend(_extra(tool, _TOOL_KEYS, ("cache_control",)))
    texts.extend(
        _tool_choice_extra(body.get("tool_choice"), len(tools) < len(body.get("tools") or ()))
    )
    return [*files, *({"role": "user", "content": text} for text in texts)]


def _document_file(block: dict[str, Any]) -> dict[str, Any] | None:
    """The chat ``file`` object a ``document`` block's source stands for: inline
    base64 data as ``file_data``; a url or file id as a reference the gateway
    cannot see. ``None`` for other sources (text, content), counted as JSON."""
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    kind, data = source.get("type"), source.get("data")
    if kind == "base64" and isinstance(data, str):
        return {"file_data": data}
    if kind == "url":
        return {"file_url": "url"}
    if kind == "file":
        return {"file_id": "file"}
    return None


def _tool_choice_extra(choice: Any, mapped: bool) -> list[str]:
    """``tool_choice`` keys the translation does not read (all of it when there
    are no custom tools to map it onto)."""
    if choice is None:
        return []
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not mapped or not isinstance(kind, str) or kind not in _CHOICES:
        return [] if is_setting(choice) else [_json_text({"tool_choice": choice})]
    known = ("type", "name") if kind == "tool" else ("type",)
    return _extra(choice, known, ("disable_parallel_tool_use",))


_CHOICES = frozenset({"auto", "any", "none", "tool"})

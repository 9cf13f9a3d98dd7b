"""What ``POST /v1/messages`` checks in a request body, and the bodies it makes of it.

The same functions serve the gateway's process (small bodies) and a counting
worker process (large ones, :func:`aigw.proxy.counting.workers.inspect_messages_body`),
so both paths refuse and translate alike.
"""

from __future__ import annotations

from typing import Any

import orjson

from aigw.proxy.adapters import ADAPTERS
from aigw.proxy.admission import MAX_OUTPUT_TOKENS, max_tokens_field, untranslatable
from aigw.proxy.body import Names, names
from aigw.proxy.errors import InvalidRequest, ModelNotAllowed
from aigw.proxy.messages import request

_ROLES = ("user", "assistant")

_SOURCE = names({"type", "media_type", "data", "url", "file_id"})
_BLOCK_CHILDREN: dict[str, Names] = {"source": _SOURCE}
_BLOCK = Names(
    frozenset(
        {"type", "text", "source", "id", "name", "input", "tool_use_id", "content"}
        | {"is_error", "cache_control", "citations", "thinking", "signature", "title"}
    ),
    _BLOCK_CHILDREN,
)
_BLOCK_CHILDREN["content"] = _BLOCK  # a tool_result holds blocks too
#: What ``POST /v1/messages`` reads: a case variant of one of these is refused.
MESSAGES_NAMES = names(
    {"model", "messages", "system", "max_tokens", "stream", "tools", "tool_choice"}
    | {"thinking", "temperature", "top_p", "top_k", "stop_sequences", "metadata"}
    | {"service_tier", "container", "mcp_servers"},
    messages=names({"role", "content"}, content=_BLOCK),
    system=_BLOCK,
    tools=names({"type", "name", "description", "input_schema", "cache_control"}),
    tool_choice=names({"type", "name", "disable_parallel_tool_use"}),
    metadata=names({"user_id"}),
    thinking=names({"type", "budget_tokens"}),
)


def _check_blocks(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or an array", param=where)
    for position, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(
                f"{where}.content[{position}] must be an object with a 'type'", param=where
            )


def _optional(body: dict[str, Any], field: str, kind: type | tuple[type, ...], name: str) -> None:
    if body.get(field) is not None and not isinstance(body[field], kind):
        raise InvalidRequest(f"'{field}' must be {name}", param=field)


def validate(body: Any, *, require_max_tokens: bool) -> int | None:
    """Just enough shape to count, translate and forward safely (the upstream
    judges the rest); returns ``max_tokens``."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        if message.get("role") not in _ROLES:
            raise InvalidRequest(f"{where}.role must be user or assistant", param=where + ".role")
        _check_blocks(message.get("content"), where)
    system = body.get("system")
    if system is not None:
        _check_blocks(system, "system")
    _optional(body, "model", str, "a string")
    _optional(body, "stream", bool, "a boolean")
    _optional(body, "tools", list, "an array")
    _optional(body, "tool_choice", dict, "an object")
    _optional(body, "metadata", dict, "an object")
    _optional(body, "stop_sequences", list, "an array")
    if any(not isinstance(tool, dict) for tool in body.get("tools") or []):
        raise InvalidRequest("'tools' must be an array of objects", param="tools")
    if any(not isinstance(stop, str) for stop in body.get("stop_sequences") or []):
        raise InvalidRequest("'stop_sequences' must be an array of strings")
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not require_max_tokens:
        return None
    if type(max_tokens) is not int or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS:
        raise InvalidRequest(
            f"'max_tokens' is required: an integer from 1 to {MAX_OUTPUT_TOKENS}",
            param="max_tokens",
        )
    return max_tokens


def fill_model(body: dict[str, Any], model: str) -> bool:
    """The key's *model* filled in when omitted (True: the body changed); any
    other model refused."""
    if body.get("model") is None:
        body["model"] = model
        return True
    if body["model"] != model:
        raise ModelNotAllowed(f"This key may use model '{model}' only", param="model")
    return False


def chat_forms(
    body: dict[str, Any], model: str, native: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Chat Completions request *body* stands for, and the one to count: the
    same, plus what a native upstream is sent that the translation drops."""
    try:
        chat = request.to_chat_request(body, max_tokens_field(model))
        if not native:
            return chat, chat
        return chat, {**chat, "messages": [*chat["messages"], *request.untranslated(body)]}
    except (TypeError, ValueError):  # a value too deeply nested to write as JSON text
        raise InvalidRequest("The request body is nested too deeply") from None


def encode_upstream(
    kind: str, body: dict[str, Any], chat: dict[str, Any], modified: bool, raw: bytes
) -> bytes:
    """The body to forward to a provider of *kind*: an ``anthropic`` one gets the
    client's Messages body (*raw* itself unless *modified*), others the Chat
    Completions translation *chat* (``include_usage`` asked for on a stream)."""
    try:
        if kind == "anthropic":
            return orjson.dumps(body) if modified else raw
        if chat.get("stream") is True:
            chat["stream_options"] = {"include_usage": True}
        return ADAPTERS[kind].encode_request(chat, b"", True)
    except TypeError:  # orjson writes at most 255 levels but reads up to 1024
        raise InvalidRequest("The request body is nested too deeply") from None
    except (AttributeError, ValueError, KeyError, IndexError) as exc:
        # A shape the provider translation cannot take: the client's to fix.
        raise untranslatable(exc) from None

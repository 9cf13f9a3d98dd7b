"""A Responses request seen as a Chat Completions request, for counting its input.

OpenAI publishes no token formula for the Responses API; the model sees the
same conversation either way, so the gateway converts the request and counts
it with the chat rules (:mod:`aigw.proxy.counting.prompt`). Where the mapping
is not exact it errs high, never low:

* ``instructions`` count as a first ``developer`` message;
* ``input`` as a string is one user message; message items keep their role,
  and their text parts (``input_text``, ``output_text``, ``refusal``) count as
  chat text parts; ``input_image`` is priced like a chat image (a ``file_id``
  image as one of unknown size, 1024x1024);
* ``function_call`` items count as an assistant ``tool_calls`` entry,
  ``function_call_output`` items as the matching ``tool`` message;
* ``reasoning`` items count their summary and content text, and their
  ``encrypted_content`` as if it were text (it is ciphertext in base64 of the
  reasoning, which tokenizes into more tokens than the reasoning it holds);
* any other item kind (hosted tool calls and their outputs, custom tools, MCP
  …) and any unknown content part count as the compact JSON text of the item
  or part, an assistant message of its own;
* ``function`` tools count as chat function tools; any other tool (hosted
  tools, MCP servers, custom tools) as the compact JSON of its definition in
  a message of its own; ``tool_choice`` naming a function and
  ``text.format`` with a JSON schema count as their chat equivalents.

* at every level, a key the mapping does not read (inside a known item,
  content part, function tool, ``tool_choice`` or ``text.format``) counts as
  the compact JSON text of ``{"key": value}``, and so do ids, statuses and
  flags once they hold more than a short plain value;
* any other top-level field counts as the compact JSON text of
  ``{"field": value}`` (a message of its own), the gateway's settings
  (``temperature``, ``metadata``, ``reasoning``, …) too once they hold more
  than numbers, booleans and strings of at most 64 characters (issue 10: the
  gateway never forwards text it did not count).

What the gateway cannot see, it cannot count: ``previous_response_id``,
``conversation``, a stored ``prompt`` template, ``item_reference`` items and
``input_file`` parts by ``file_id`` or ``file_url``. An ``input_file`` with
inline ``file_data`` counts as a chat ``file`` part: a bound on the file's
text and page images (:mod:`aigw.proxy.counting.files`). :attr:`ChatView.uncountable` names the first such
field; admission refuses the request under ``reject`` with an input limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aigw.proxy.counting.free import is_plain, is_setting
from aigw.proxy.counting.functions import compact_json

__all__ = ["ChatView", "chat_view"]

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
# Fields that make the upstream add context the gateway never sees.
_STORED_CONTEXT = ("previous_response_id", "conversation", "prompt")
# Top-level fields with a rule above.
_MAPPED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "text"})
# Settings: free while they hold no text (is_setting), as the chat counter's settings.
_SETTINGS = frozenset(
    {"max_output_tokens", "stream", "stream_options", "reasoning", "include", "metadata"}
    | {"store", "background", "truncation", "temperature", "top_p", "top_logprobs"}
    | {"parallel_tool_calls", "max_tool_calls", "user", "service_tier"}
    | {"safety_identifier", "prompt_cache_key", "prompt_cache_retention"}
)
# Keys of items and parts that hold no prompt while short (ids, statuses).
_ITEM_FREE = ("id", "status")
_FUNCTION_TOOL = ("type", "name", "description", "parameters")


@dataclass(frozen=True, slots=True)
class ChatView:
    """The Chat Completions body to count, and the first input the gateway cannot
    count (``None``: everything the upstream will see is in ``body``)."""

    body: dict[str, Any]
    uncountable: str | None = None


def chat_view(request: Mapping[str, Any]) -> ChatView:
    """The chat-shaped equivalent of a Responses *request* (see the module docstring).
    Never raises: shapes it does not know count as their JSON text."""
    uncountable: list[str] = [
        field for field in _STORED_CONTEXT if request.get(field) not in (None, "", {})
    ]
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "developer", "content": instructions})
    items = request.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, Mapping):
                messages.extend(_item_messages(item, f"input[{index}]", uncountable))
    extra_tools: list[dict[str, Any]] = []
    chat: dict[str, Any] = {"model": request.get("model"), "messages": messages}
    tools = request.get("tools")
    choice = request.get("tool_choice")
    choice_mapped = False
    if isinstance(tools, list):
        functions = []
        for tool in tools:
            if not isinstance(tool, Mapping):
                continue
            if tool.get("type") == "function" and isinstance(tool.get("name"), str):
                functions.append({"type": "function", "function": _function_definition(tool)})
                extra_tools.extend(_leftovers(tool, _FUNCTION_TOOL, ("strict",), uncountable))
            else:
                text = _json_text(tool, "tools", uncountable)
                extra_tools.append({"role": "user", "content": text})
        if functions:
            chat["tools"] = functions
            if isinstance(choice, Mapping) and choice.get("type") == "function":
                chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
                extra_tools.extend(_leftovers(choice, ("type", "name"), (), uncountable))
                choice_mapped = True
            elif choice == "none":
                chat["tool_choice"] = "none"
    if not choice_mapped and choice is not None and not is_setting(choice):
        extra_tools.append(_text_message({"tool_choice": choice}, "tool_choice", uncountable))
    messages.extend(extra_tools)
    for name, value in request.items():
        if name in _MAPPED or name in _STORED_CONTEXT or value is None:
            continue
        if name in _SETTINGS and is_setting(value):
            continue
        text = _json_text({name: value}, name, uncountable)
        messages.append({"role": "user", "content": text})
    _text_config(request.get("text"), chat, uncountable)
    return ChatView(chat, uncountable[0] if uncountable else None)


def _text_config(config: object, chat: dict[str, Any], uncountable: list[str]) -> None:
    """``text``: a JSON-schema format counts as chat's ``response_format``; what
    else it holds (a format's description, unknown keys) as its JSON text."""
    if config is None:
        return
    if not isinstance(config, Mapping):
        chat["messages"].append(_text_message({"text": config}, "text", uncountable))
        return
    left = _leftovers(config, ("format",), ("verbosity",), uncountable)
    fmt = config.get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        _json_text(fmt, "text", uncountable)  # only to learn whether it can be written
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": fmt.get("name"), "schema": fmt.get("schema")},
        }
        left.extend(_leftovers(fmt, ("type", "name", "schema"), ("strict",), uncountable))
    elif isinstance(fmt, Mapping) and fmt.get("type") in ("text", "json_object"):
        left.extend(_leftovers(fmt, ("type",), (), uncountable))
    elif fmt is not None:
        left.append(_text_message({"format": fmt}, "text", uncountable))
    chat["messages"].extend(left)


def _leftovers(
    obj: Mapping[str, Any], known: tuple[str, ...], free: tuple[str, ...], uncountable: list[str]
) -> list[dict[str, Any]]:
    """What of *obj* no rule read, as messages holding its JSON text: keys not in
    *known*, and keys in *free* (ids, statuses, flags) once they hold more than
    a short plain value (issue 10: the gateway never forwards text it did not count)."""
    return [
        _text_message({name: value}, name, uncountable)
        for name, value in obj.items()
        if name not in known and not (name in free and _free(value))
    ]


def _free(value: Any) -> bool:
    # Empty containers (``"annotations": []``, as the SDK sends back) hold no text.
    return value is None or value == [] or value == {} or is_plain(value, 0)


def _text_message(value: Mapping[str, Any], where: str, uncountable: list[str]) -> dict[str, Any]:
    return {"role": "user", "content": _json_text(value, where, uncountable)}


def _function_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    definition = {"name": tool["name"]}
    for field in ("description", "parameters"):
        if tool.get(field) is not None:
            definition[field] = tool[field]
    return definition


def _item_messages(
    item: Mapping[str, Any], where: str, uncountable: list[str]
) -> list[dict[str, Any]]:
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    if kind == "message":
        role = item.get("role")
        return [
            {
                # A list or an object is unhashable: it cannot be looked up in a set.
                "role": role if isinstance(role, str) and role in _MESSAGE_ROLES else "user",
                "content": _content(item.get("content"), where, uncountable),
            },
            *_leftovers(item, ("type", "role", "content"), _ITEM_FREE, uncountable),
        ]
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        return [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            *_leftovers(item, ("type", "call_id", "name", "arguments"), _ITEM_FREE, uncountable),
        ]
    if kind == "function_call_output":
        output = item.get("output")
        content = output if isinstance(output, str) else _content(output, where, uncountable)
        return [
            {"role": "tool", "tool_call_id": item.get("call_id"), "content": content},
            *_leftovers(item, ("type", "call_id", "output"), _ITEM_FREE, uncountable),
        ]
    if kind == "reasoning":
        parts: list[dict[str, Any]] = []
        for field in ("summary", "content"):
            value = item.get(field)
            if isinstance(value, list):
                parts.extend(_parts(value, where, uncountable))
        secret = item.get("encrypted_content")
        if isinstance(secret, str) and secret:
            parts.append({"type": "text", "text": secret})
        known = ("type", "summary", "content", "encrypted_content")
        return [
            {"role": "assistant", "content": parts},
            *_leftovers(item, known, _ITEM_FREE, uncountable),
        ]
    if kind == "item_reference":
        uncountable.append(where)
        return []
    # Hosted tool calls and outputs, custom tools, MCP, …: their JSON text, which is
    # more than the model is shown of them (an id or a status too, once it is long).
    shown = {
        name: value for name, value in item.items() if not (name in _ITEM_FREE and _free(value))
    }
    return [{"role": "assistant", "content": _json_text(shown, where, uncountable)}]


def _json_text(value: Mapping[str, Any], where: str, uncountable: list[str]) -> str:
    """The compact JSON of *value*; one too deeply nested to write cannot be counted."""
    text = compact_json(dict(value))
    if not text:
        uncountable.append(where)
    return text


def _content(content: object, where: str, uncountable: list[str]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _parts(content, where, uncountable)
    return []


def _parts(parts: list[Any], where: str, uncountable: list[str]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if isinstance(kind, str) and kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            converted.append({"type": "text", "text": part["text"]})
            known: tuple[str, ...] = ("type", "text")
            free: tuple[str, ...] = ("annotations", "logprobs")
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            converted.append({"type": "refusal", "refusal": part["refusal"]})
            known, free = ("type", "refusal"), ()
        elif kind == "input_image":
            url = part.get("image_url")
            detail = part.get("detail")
            converted.append(
                {
                    "type": "image_url",
                    "image_url": {
                        "url": url if isinstance(url, str) else "",
                        "detail": detail if isinstance(detail, str) and _free(detail) else "auto",
                    },
                }
            )
            known, free = ("type", "image_url"), ("detail", "file_id")
        elif (
            kind == "input_file"
            and isinstance(part.get("file_data"), str)
            and "file_id" not in part
            and "file_url" not in part
        ):
            # Inline data: bounded like a chat file part (counting/files.py).
            converted.append({"type": "file", "file": {"file_data": part["file_data"]}})
            known, free = ("type", "file_data"), ("detail",)
        elif kind == "input_file":
            uncountable.append(f"{where}.content[{index}]")
            continue
        else:
            text = _json_text(part, f"{where}.content[{index}]", uncountable)
            converted.append({"type": "text", "text": text})
            continue
        for left in _leftovers(part, known, free, uncountable):
            converted.append({"type": "text", "text": left["content"]})
    return converted

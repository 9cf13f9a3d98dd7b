"""A Chat Completions request as the Gemini ``generateContent`` request it
becomes (roles, parts, tools, tool choice and generation settings; the mapping
table is in docs/providers.md). The answer side is :mod:`.gemini`.
"""

from __future__ import annotations

import contextlib
import mimetypes
from typing import Any

import orjson


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _image_part(image: Any) -> dict[str, Any] | None:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime = header[5:].split(";", 1)[0] or "image/png"
        return {"inlineData": {"mimeType": mime, "data": data}}
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        text = _text(content)
        return [{"text": text}] if text else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = _image_part(part.get("image_url"))
            if image is not None:
                parts.append(image)
    return parts


def _args(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            value = orjson.loads(raw or "{}")
        except orjson.JSONDecodeError:
            return {"arguments": raw}
        return value if isinstance(value, dict) else {"value": value}
    return raw if isinstance(raw, dict) else {}


def _response(content: Any) -> dict[str, Any]:
    text = _text(content)
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(text)
        if isinstance(value, dict):
            return value
    return {"content": text}


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": list(parts)})


def to_gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name
    for message in body.get("messages") or []:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text(content)
            if text:
                system.append({"text": text})
        elif role == "user":
            _append(contents, "user", _user_parts(content))
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            text = _text(content)
            if text:
                parts.append({"text": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                name = str(function.get("name") or "")
                call_names[str(call.get("id") or "")] = name
                parts.append(
                    {"functionCall": {"name": name, "args": _args(function.get("arguments"))}}
                )
            _append(contents, "model", parts)
        elif role in ("tool", "function"):
            name = message.get("name") or call_names.get(str(message.get("tool_call_id") or ""), "")
            result = {"functionResponse": {"name": name, "response": _response(content)}}
            _append(contents, "user", [result])
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    bound = body.get("max_completion_tokens") or body.get("max_tokens")
    if bound is not None:
        config["maxOutputTokens"] = bound
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        if body.get(source) is not None:
            config[target] = body[source]
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list):
        config["stopSequences"] = [s for s in stop if isinstance(s, str)]
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseJsonSchema"] = schema
    if config:
        request["generationConfig"] = config
    functions = [
        tool["function"]
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    if functions:
        declarations = []
        for function in functions:
            declaration: dict[str, Any] = {"name": function.get("name")}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parameters"] = function["parameters"]
            declarations.append(declaration)
        request["tools"] = [{"functionDeclarations": declarations}]
        choice = body.get("tool_choice")
        mode: dict[str, Any] | None = None
        if choice == "none":
            mode = {"mode": "NONE"}
        elif choice == "auto":
            mode = {"mode": "AUTO"}
        elif choice == "required":
            mode = {"mode": "ANY"}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            mode = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
        if mode is not None:
            request["toolConfig"] = {"functionCallingConfig": mode}
    return request

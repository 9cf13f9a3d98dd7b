"""Tool and function definitions, rendered the way OpenAI feeds them to the model.

OpenAI shows a request's tools to the model as a TypeScript-like
``namespace functions { type f = (_: {...}) => any; }`` block; the rendering
here follows hmarr/openai-chat-tokens, whose constants (applied in
:mod:`aigw.proxy.counting.prompt`) reproduce the figures OpenAI's cookbook
reports from the API for both encodings. Unlike the cookbook's per-property
constants it handles nested objects, arrays and optional parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["compact_json", "function_definitions", "render_functions"]

_SCHEMA_DEPTH = 32


def function_definitions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The function definitions of a request: ``tools`` of type function, then
    the legacy ``functions``."""
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
        return compact_json(schema)
    enum = schema.get("enum")
    kind = schema.get("type")
    if isinstance(enum, list) and enum:
        if kind == "string" or all(isinstance(v, str) for v in enum):
            return " | ".join(f'"{v}"' for v in enum)
        return " | ".join(compact_json(v) for v in enum)
    if "const" in schema:
        return compact_json(schema["const"])
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


def compact_json(value: object) -> str:
    """*value* as compact JSON; ``""`` when it cannot be serialized."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return ""

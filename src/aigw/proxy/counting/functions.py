"""Tool and function definitions, rendered the way OpenAI feeds them to the model.

OpenAI shows a request's tools to the model as a TypeScript-like
``namespace functions { type f = (_: {...}) => any; }`` block. The rendering
follows hmarr/openai-chat-tokens (exact on 36 API-measured 0613 cases) and
OpenAI's own renderer of the same dialect (openai/harmony,
``json_schema_to_typescript``) for what those cases do not cover:

* ``anyOf`` / ``oneOf`` members and ``type`` lists are joined with ``|``;
  ``const`` is shown as its member's plain type; ``enum`` values are listed
  (strings quoted); ``nullable`` adds ``| null``.
* ``default`` trails the property line: ``name?: type, // default: v``
  (harmony; no API-measured pair was found, so it may err high).
* Descriptions of properties of nested objects are dropped by the 0613
  snapshots and shown by later ones (:class:`~.rules.CountingRules`).

Cost is linear in the schema's size: each schema node is rendered once (a
``type`` list does not re-render the node per type), and beyond
:data:`_SCHEMA_DEPTH` levels a subtree is counted as its JSON text.

Whatever the renderer does not show (keywords OpenAI drops, such as
``const`` values, ``format``, ``pattern``, ``$defs``, unknown keys, nested
descriptions on 0613) is collected in :attr:`Rendered.unshown`: the
caller counts it unless it stays under a small allowance, so a schema cannot
carry text past the input limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = ["Rendered", "compact_json", "function_definitions", "render_functions"]

_SCHEMA_DEPTH: Final = 32

# Keywords whose value cannot carry text when it is a number or a boolean.
_NUMERIC_KEYWORDS: Final = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "uniqueItems",
        "additionalProperties",
        "nullable",
        "strict",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
# Keywords the renderer shows (or whose structure it walks).
_RENDERED_KEYWORDS: Final = frozenset(
    {"type", "description", "enum", "properties", "required", "items", "anyOf", "oneOf", "default"}
)
_KINDS: Final = ("string", "number", "integer", "boolean", "null", "object", "array")


@dataclass(slots=True)
class Rendered:
    """Function definitions as the model sees them, and the text they carry
    that it does not see (JSON fragments)."""

    text: str
    unshown: list[str] = field(default_factory=list)
    #: Tokens to add to the text's count (objects whose first property has no description).
    adjust: int = 0


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


def render_functions(
    functions: Iterable[Mapping[str, Any]],
    *,
    nested_descriptions: bool = True,
    first_bare_property: int = 0,
) -> Rendered:
    """Function definitions as OpenAI shows them to the model: a TypeScript
    namespace, one ``type name = (_: {...}) => any;`` per function, with
    descriptions as ``//`` comments and optional parameters marked ``?``."""
    renderer = _Renderer(nested_descriptions, first_bare_property)
    lines = ["namespace functions {", ""]
    for function in functions:
        name = function.get("name")
        name = name if isinstance(name, str) else compact_json(name)
        description = function.get("description")
        if isinstance(description, str) and description:
            lines.append(f"// {description}")
        elif description is not None:
            renderer.unshown.append(compact_json(description))
        for key, value in function.items():
            if key not in ("name", "description", "parameters", "strict"):
                renderer.unshown.append(compact_json({key: value}))
        parameters = function.get("parameters")
        if not isinstance(parameters, Mapping):
            if parameters is not None:
                renderer.unshown.append(compact_json(parameters))
            parameters = {}
        properties = parameters.get("properties")
        if isinstance(properties, Mapping) and properties:
            lines.append(f"type {name} = (_: {{")
            lines.append(renderer.properties(parameters, 0, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        renderer.unshown_keys(parameters, ("type", "properties", "required"))
        lines.append("")
    lines.append("} // namespace functions")
    return Rendered("\n".join(lines), renderer.unshown, renderer.adjust)


class _Renderer:
    __slots__ = ("adjust", "first_bare_property", "nested_descriptions", "unshown")

    def __init__(self, nested_descriptions: bool, first_bare_property: int) -> None:
        self.nested_descriptions = nested_descriptions
        self.first_bare_property = first_bare_property
        self.unshown: list[str] = []
        self.adjust = 0

    def unshown_keys(self, schema: Mapping[str, Any], shown: Iterable[str]) -> None:
        shown = frozenset(shown)
        for key, value in schema.items():
            if key in shown:
                continue
            if key in _NUMERIC_KEYWORDS and (
                value is None or isinstance(value, bool | int | float)
            ):
                continue
            self.unshown.append(compact_json({key: value}))

    def properties(self, schema: Mapping[str, Any], indent: int, depth: int) -> str:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return ""
        required = schema.get("required")
        required = (
            frozenset(r for r in required if isinstance(r, str))
            if isinstance(required, list)
            else frozenset()
        )
        pad = " " * indent
        lines = []
        for index, (name, prop) in enumerate(properties.items()):
            if not isinstance(prop, Mapping):
                self.unshown.append(compact_json(prop))
                prop = {}
            description = prop.get("description")
            if isinstance(description, str) and description:
                if indent < 2 or self.nested_descriptions:
                    lines.append(f"{pad}// {description}")
                else:
                    self.unshown.append(description)
            else:
                if index == 0:
                    self.adjust += self.first_bare_property
                if description is not None:
                    self.unshown.append(compact_json(description))
            mark = "" if name in required else "?"
            line = f"{pad}{name}{mark}: {self.type(prop, indent, depth + 1)},"
            if "default" in prop:
                line += f" // default: {_default(prop)}"
            lines.append(line)
        return "\n".join(lines)

    def type(self, schema: Mapping[str, Any], indent: int, depth: int) -> str:
        if depth > _SCHEMA_DEPTH:
            # Absurdly deep schemas: count their JSON rather than recurse further.
            return compact_json(schema)
        self.unshown_keys(schema, _RENDERED_KEYWORDS)
        for union in ("anyOf", "oneOf"):
            options = schema.get(union)
            if isinstance(options, list) and options:
                # A union replaces the node's own type: each member is rendered once.
                rendered = []
                for option in options:
                    if not isinstance(option, Mapping):
                        self.unshown.append(compact_json(option))
                        option = {}
                    rendered.append(self.type(option, indent, depth + 1))
                return " | ".join(rendered)
        kind = schema.get("type")
        kinds: list[str] = []
        if isinstance(kind, list):
            for k in kind:
                if isinstance(k, str) and k in _KINDS and k not in kinds:
                    kinds.append(k)
                elif not isinstance(k, str) or k not in _KINDS:
                    self.unshown.append(compact_json(k))
        elif isinstance(kind, str) and kind in _KINDS:
            kinds.append(kind)
        elif kind is not None:
            self.unshown.append(compact_json(kind))
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            rendered_enum = (
                " | ".join(f'"{v}"' for v in enum)
                if "string" in kinds or all(isinstance(v, str) for v in enum)
                else " | ".join(compact_json(v) for v in enum)
            )
            if len(kinds) <= 1:
                return rendered_enum
            kinds = [k for k in kinds if k not in ("string", "number", "integer")]
            return " | ".join(
                [rendered_enum, *(self.kind(schema, k, indent, depth) for k in kinds)]
            )
        if not kinds:
            return "any"
        # Each kind reads a different part of the node (properties, items), so
        # listing kinds never renders a subtree twice.
        rendered = [self.kind(schema, k, indent, depth) for k in kinds]
        if schema.get("nullable") is True and "null" not in kinds:
            rendered.append("null")
        return " | ".join(dict.fromkeys(rendered))

    def kind(self, schema: Mapping[str, Any], kind: str, indent: int, depth: int) -> str:
        if kind == "string":
            return "string"
        if kind in ("number", "integer"):
            return "number"
        if kind in ("boolean", "null"):
            return kind
        if kind == "object":
            return "\n".join(("{", self.properties(schema, indent + 2, depth + 1), "}"))
        items = schema.get("items")
        if isinstance(items, Mapping):
            return f"{self.type(items, indent, depth + 1)}[]"
        if items is not None:
            self.unshown.append(compact_json(items))
        return "any[]"


def _default(schema: Mapping[str, Any]) -> str:
    # harmony: strings are quoted unless the property is an enum.
    value = schema.get("default")
    if isinstance(value, str) and isinstance(schema.get("enum"), list):
        return value
    return compact_json(value)


def compact_json(value: object) -> str:
    """*value* as compact JSON (UTF-8 text, no escapes beyond JSON's own).

    Never loses text: a value too deep for the JSON encoders is given as
    every key and string in it, one a line (walked without recursion).
    """
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return _all_text(value)


def _all_text(value: object) -> str:
    texts: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            texts.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            texts.append(str(item))
    return "\n".join(texts)

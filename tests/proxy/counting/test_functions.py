"""Tool and function definitions (aigw.proxy.counting.functions), checked
against prompt_tokens the OpenAI API reported: the cookbook's weather tool, and
the recordings hmarr/openai-chat-tokens derived its rendering rules from."""

from __future__ import annotations

import pytest
import tiktoken

from aigw.proxy.counting import Encoders, count_chat_input
from tests.proxy.counting.published import (
    COOKBOOK_TOOL_MESSAGES,
    COOKBOOK_TOOLS,
    COOKBOOK_TOOLS_PROMPT_TOKENS,
)
from tests.proxy.counting.support import user


@pytest.mark.parametrize(("model", "expected"), COOKBOOK_TOOLS_PROMPT_TOKENS.items())
def test_cookbook_tools_match_openai_prompt_tokens(
    encoders: Encoders, model: str, expected: int
) -> None:
    body = {"model": model, "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert count_chat_input(body, encoders.for_model(model)) == expected


def test_cookbook_tools_through_legacy_functions_param(encoders: Encoders) -> None:
    functions = [tool["function"] for tool in COOKBOOK_TOOLS]
    body = {"model": "gpt-4o", "messages": COOKBOOK_TOOL_MESSAGES, "functions": functions}
    assert count_chat_input(body, encoders.for_model("gpt-4o")) == 101


_EMPTY = {"type": "object", "properties": {}}
_RECIPE = {
    "name": "get_recipe",
    "parameters": {
        "type": "object",
        "required": ["ingredients", "instructions", "time_to_cook"],
        "properties": {
            "ingredients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "unit", "amount"],
                    "properties": {
                        "name": {"type": "string"},
                        "unit": {
                            "enum": ["grams", "ml", "cups", "pieces", "teaspoons"],
                            "type": "string",
                        },
                        "amount": {"type": "number"},
                    },
                },
            },
            "instructions": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Steps to prepare the recipe (no numbering)",
            },
            "time_to_cook": {
                "type": "number",
                "description": "Total time to prepare the recipe in minutes",
            },
        },
    },
}
# prompt_tokens recorded from the OpenAI API for gpt-3.5-turbo (cl100k_base) in
# hmarr/openai-chat-tokens, tests/token-counts.test.ts: the measurements its
# function-definition rules (which this module follows) were derived from.
HMARR_CASES: list[tuple[list[dict[str, object]], list[dict[str, object]] | None, int]] = [
    ([user("hello")], None, 8),
    ([user("hello world")], None, 9),
    ([{"role": "system", "content": "hello"}], None, 8),
    ([{"role": "system", "content": "hello:"}], None, 9),
    (
        [
            {"role": "system", "content": "# Important: you're the best robot"},
            user("hello robot"),
            {"role": "assistant", "content": "hello world"},
        ],
        None,
        27,
    ),
    ([user("hello")], [{"name": "foo", "parameters": _EMPTY}], 31),
    ([user("hello")], [{"name": "foo", "description": "Do a foo", "parameters": _EMPTY}], 36),
    (
        [user("hello")],
        [
            {
                "name": "bing_bong",
                "description": "Do a bing bong",
                "parameters": {"type": "object", "properties": {"foo": {"type": "string"}}},
            }
        ],
        49,
    ),
    (
        [user("hello")],
        [
            {
                "name": "bing_bong",
                "description": "Do a bing bong",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "foo": {"type": "string"},
                        "bar": {"type": "number", "description": "A number"},
                    },
                },
            }
        ],
        57,
    ),
    (
        [user("hello")],
        [
            {
                "name": "bing_bong",
                "description": "Do a bing bong",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "foo": {
                            "type": "object",
                            "properties": {
                                "bar": {"type": "string", "enum": ["a", "b", "c"]},
                                "baz": {"type": "boolean"},
                            },
                        }
                    },
                },
            }
        ],
        68,
    ),
    (
        [user("hello world"), {"role": "function", "name": "do_stuff", "content": "{}"}],
        None,
        15,
    ),
    (
        [
            user("hello world"),
            {"role": "function", "name": "do_stuff", "content": '{"foo": "bar", "baz": 1.5}'},
        ],
        None,
        28,
    ),
    (
        [
            {
                "role": "function",
                "name": "dance_the_tango",
                "content": '{"a": { "b" : { "c": false}}}',
            }
        ],
        None,
        24,
    ),
    (
        [
            {
                "role": "assistant",
                "content": "",
                "function_call": {"name": "do_stuff", "arguments": '{"foo": "bar", "baz": 1.5}'},
            }
        ],
        None,
        26,
    ),
    (
        [
            {
                "role": "assistant",
                "content": "",
                "function_call": {
                    "name": "do_stuff",
                    "arguments": '{"foo":"bar", "baz":\n\n 1.5}',
                },
            }
        ],
        None,
        25,
    ),
    (
        [{"role": "system", "content": "Hello"}, user("Hi there")],
        [{"name": "do_stuff", "parameters": _EMPTY}],
        35,
    ),
    (
        [{"role": "system", "content": "Hello:"}, user("Hi there")],
        [{"name": "do_stuff", "parameters": _EMPTY}],
        35,
    ),
    (
        [
            {"role": "system", "content": "Hello:"},
            {"role": "system", "content": "Hello"},
            user("Hi there"),
        ],
        [{"name": "do_stuff", "parameters": _EMPTY}],
        40,
    ),
    ([user("hello")], [_RECIPE], 106),
]


@pytest.mark.parametrize(("messages", "functions", "expected"), HMARR_CASES)
def test_recorded_gpt35_function_cases(
    cl100k: tiktoken.Encoding,
    messages: list[dict[str, object]],
    functions: list[dict[str, object]] | None,
    expected: int,
) -> None:
    # Measured in 2023, when the alias meant gpt-3.5-turbo-0613.
    body: dict[str, object] = {"model": "gpt-3.5-turbo-0613", "messages": messages}
    if functions is not None:
        body["functions"] = functions
    assert count_chat_input(body, cl100k) == expected


def test_deeply_nested_schema_does_not_recurse_forever(o200k: tiktoken.Encoding) -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(500):
        schema = {"type": "object", "properties": {"x": schema}}
    body = {
        "messages": [user("hi")],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }
    assert count_chat_input(body, o200k) > 10

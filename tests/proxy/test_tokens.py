"""Token counting: published reference figures, counting rules, the size cap,
async offloading, offline loading, and the streaming output counter."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import shutil
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigw.proxy import tokens
from aigw.proxy.tokens import (
    Encoders,
    InputCount,
    OutputCounter,
    count_chat_input,
    count_chat_input_async,
    encoding_name_for_model,
    image_tokens,
    load_encoding,
    measure_chat_input,
)

ENCODINGS_DIR = Path(tokens.__file__).parent.parent / "encodings"


@pytest.fixture(scope="module")
def encoders() -> Iterator[Encoders]:
    loaded = Encoders.load()
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def cl100k(encoders: Encoders) -> tiktoken.Encoding:
    return encoders.get("cl100k_base")


@pytest.fixture(scope="module")
def o200k(encoders: Encoders) -> tiktoken.Encoding:
    return encoders.get("o200k_base")


def n_tokens(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode_ordinary(text))


def user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


# ---------------------------------------------------------------------------
# Published reference figures
# ---------------------------------------------------------------------------

# OpenAI cookbook, "How to count tokens with tiktoken", section 6
# (github.com/openai/openai-cookbook, examples/How_to_count_tokens_with_tiktoken.ipynb,
# commit c81359cdc6744f001e40c08a192604c5113fdab3): the example messages and the
# prompt_tokens the OpenAI API reported for them, printed in the notebook.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]
COOKBOOK_MESSAGES_PROMPT_TOKENS = {
    "gpt-3.5-turbo": 129,
    "gpt-4-0613": 129,
    "gpt-4": 129,
    "gpt-4o": 124,
    "gpt-4o-mini": 124,
}

# Same notebook, section 7 ("Counting tokens for chat completions with tool
# calls"): a weather tool and the prompt_tokens the API reported with it.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]
COOKBOOK_TOOLS_PROMPT_TOKENS = {
    "gpt-3.5-turbo": 105,
    "gpt-4": 105,
    "gpt-4o": 101,
    "gpt-4o-mini": 101,
}


@pytest.mark.parametrize(("model", "expected"), COOKBOOK_MESSAGES_PROMPT_TOKENS.items())
def test_cookbook_messages_match_openai_prompt_tokens(
    encoders: Encoders, model: str, expected: int
) -> None:
    body = {"model": model, "messages": COOKBOOK_MESSAGES, "max_tokens": 1}
    assert count_chat_input(body, encoders.for_model(model)) == expected


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
    body: dict[str, object] = {"model": "gpt-3.5-turbo", "messages": messages}
    if functions is not None:
        body["functions"] = functions
    assert count_chat_input(body, cl100k) == expected


# Cookbook section 5 ("Comparing encodings") prints the token counts of this
# string: 9 in cl100k_base, 8 in o200k_base.
@pytest.mark.parametrize(("name", "expected"), [("cl100k_base", 9), ("o200k_base", 8)])
def test_unicode_text_matches_cookbook_comparison(
    encoders: Encoders, name: str, expected: int
) -> None:
    body = {"messages": [user("お誕生日おめでとう")]}
    # 3 per message + "user" (1) + content + 3 reply priming.
    assert count_chat_input(body, encoders.get(name)) == 3 + 1 + expected + 3


# ---------------------------------------------------------------------------
# Counting rules
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", None, []])
def test_empty_content_costs_only_the_overhead(o200k: tiktoken.Encoding, content: object) -> None:
    assert count_chat_input({"messages": [user(content)]}, o200k) == 3 + 1 + 3


def test_no_messages_costs_the_reply_priming(o200k: tiktoken.Encoding) -> None:
    assert count_chat_input({}, o200k) == 3


def test_name_costs_its_tokens_plus_one(o200k: tiktoken.Encoding) -> None:
    plain = count_chat_input({"messages": [user("hi")]}, o200k)
    named = count_chat_input({"messages": [{**user("hi"), "name": "alice_the_tester"}]}, o200k)
    assert named - plain == n_tokens(o200k, "alice_the_tester") + 1


def test_multipart_text_counts_each_part(o200k: tiktoken.Encoding) -> None:
    parts = [
        {"type": "text", "text": "Describe"},
        {"type": "text", "text": " the weather, please."},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]
    expected = 3 + 1 + n_tokens(o200k, "Describe") + n_tokens(o200k, " the weather, please.") + 3
    assert count_chat_input({"messages": [user(parts)]}, o200k) == expected
    single = [{"type": "text", "text": "Describe the weather"}]
    assert count_chat_input({"messages": [user(single)]}, o200k) == count_chat_input(
        {"messages": [user("Describe the weather")]}, o200k
    )


def test_tool_call_history(o200k: tiktoken.Encoding) -> None:
    arguments = '{"location": "Paris, France"}'
    body = {
        "messages": [
            user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        ]
    }
    t = lambda s: n_tokens(o200k, s)  # noqa: E731
    expected = (
        (3 + t("user") + t("Weather in Paris?"))
        # assistant: a tool call counts like a function_call (name + arguments + 3)
        + (3 + t("assistant") + t("get_weather") + t(arguments) + 3)
        # tool result: like a function message named after the call (name + 1 - 2)
        + (3 + t("tool") + t('{"temp": 21}') + t("get_weather") + 1 - 2)
        + 3
    )
    assert count_chat_input(body, o200k) == expected


def test_tool_choice(o200k: tiktoken.Encoding) -> None:
    base = {"messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    auto = count_chat_input(base, o200k)
    assert count_chat_input({**base, "tool_choice": "auto"}, o200k) == auto
    assert count_chat_input({**base, "tool_choice": "none"}, o200k) == auto + 1
    forced = {"type": "function", "function": {"name": "get_current_weather"}}
    assert count_chat_input({**base, "tool_choice": forced}, o200k) == auto + 4 + n_tokens(
        o200k, "get_current_weather"
    )


def test_response_format_schema_counts_name_and_compact_json(o200k: tiktoken.Encoding) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {"messages": [user("hi")]}
    plain = count_chat_input(body, o200k)
    with_schema = {
        **body,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        },
    }
    compact = json.dumps(schema, separators=(",", ":"))
    assert count_chat_input(with_schema, o200k) == plain + n_tokens(o200k, "reply") + n_tokens(
        o200k, compact
    )
    json_object = {**body, "response_format": {"type": "json_object"}}
    assert count_chat_input(json_object, o200k) == plain


def test_special_token_text_is_ordinary_text(o200k: tiktoken.Encoding) -> None:
    text = "<|endoftext|> and <|endofprompt|>"
    count = count_chat_input({"messages": [user(text)]}, o200k)
    assert count == 3 + 1 + n_tokens(o200k, text) + 3
    assert n_tokens(o200k, text) > 2  # not collapsed into two special tokens


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_long_texts_are_counted_exactly_in_segments(encoders: Encoders, name: str) -> None:
    encoding = encoders.get(name)
    lines = [
        "def f(x):\n    return x  # 日本\n",
        "Plain prose, with 123 numbers.\n",
        "\n\n",
        "'s t\r\n",
    ]
    text = "".join(lines[(i * 7) % len(lines)] for i in range(40_000))
    assert len(text) > 10 * tokens._SEGMENT_CHARS
    one_line = "x" * (3 * tokens._SEGMENT_CHARS) + "\nEnd"  # a split point only at the very end
    for content in (text, one_line):
        body = {"messages": [user(content)]}
        assert count_chat_input(body, encoding) == 3 + 1 + n_tokens(encoding, content) + 3


def test_very_long_single_word(o200k: tiktoken.Encoding) -> None:
    word = "a" * 100_000
    assert count_chat_input({"messages": [user(word)]}, o200k) == 3 + 1 + n_tokens(o200k, word) + 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "name",
                    "type",
                    "text",
                    "tool_calls",
                    "function",
                    "arguments",
                    "parameters",
                    "properties",
                    "image_url",
                    "url",
                    "detail",
                    "enum",
                    "items",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=json_values,
    tools=json_values,
    functions=json_values,
    tool_choice=json_values,
    response_format=json_values,
)
def test_malformed_bodies_never_raise(
    o200k: tiktoken.Encoding,
    messages: object,
    tools: object,
    functions: object,
    tool_choice: object,
    response_format: object,
) -> None:
    body = {
        "messages": messages if not isinstance(messages, list) else [messages, *messages],
        "tools": tools,
        "functions": functions,
        "tool_choice": tool_choice,
        "response_format": response_format,
    }
    assert count_chat_input(body, o200k) >= 3


def test_deeply_nested_schema_does_not_recurse_forever(o200k: tiktoken.Encoding) -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(500):
        schema = {"type": "object", "properties": {"x": schema}}
    body = {
        "messages": [user("hi")],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }
    assert count_chat_input(body, o200k) > 10


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("GPT-4-0613", "cl100k_base"),
        ("llama-3.1-8b-instruct", "o200k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def jpeg(width: int, height: int, exif_bytes: int = 0) -> bytes:
    app1 = b"\xff\xe1" + struct.pack(">H", exif_bytes + 2) + b"\0" * exif_bytes
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\0" * 9
    return b"\xff\xd8" + app1 + sof0 + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0" * 8


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_body(url: str, detail: str | None = None, model: str = "gpt-4o") -> dict[str, object]:
    image: dict[str, object] = {"url": url}
    if detail:
        image["detail"] = detail
    return {"model": model, "messages": [user([{"type": "image_url", "image_url": image}])]}


# Worked examples from OpenAI's "Images and vision" guide, "Calculating costs".
@pytest.mark.parametrize(
    ("width", "height", "detail", "model", "expected"),
    [
        (1024, 1024, "high", "gpt-4o", 765),  # 768x768 -> 4 tiles: 85 + 4*170
        (2048, 4096, "high", "gpt-4o", 1105),  # 1024x2048 -> 768x1536 -> 6 tiles
        (4096, 8192, "low", "gpt-4o", 85),
        (1024, 1024, "high", "gpt-4o-mini", 2833 + 4 * 5667),
        (1024, 1024, "low", "gpt-4o-mini", 2833),
        (1024, 1024, "high", "gpt-4.1-mini", 1659),  # 1024 patches * 1.62
        (1800, 2400, "high", "gpt-4.1-mini", 2353),  # scaled to 1452 patches * 1.62
    ],
)
def test_image_tokens_published_examples(
    width: int, height: int, detail: str, model: str, expected: int
) -> None:
    assert image_tokens(width, height, detail, model) == expected


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (png(2048, 4096), "image/png"),
        (jpeg(2048, 4096, exif_bytes=30_000), "image/jpeg"),
        (gif(2048, 4096), "image/gif"),
    ],
)
def test_image_size_read_from_data_url(o200k: tiktoken.Encoding, data: bytes, mime: str) -> None:
    body = image_body(data_url(data, mime), "high")
    assert count_chat_input(body, o200k) == 3 + 1 + 1105 + 3


def test_image_detail_and_unknown_sizes(o200k: tiktoken.Encoding) -> None:
    overhead = 3 + 1 + 3
    assert count_chat_input(image_body("https://example.com/a.png", "low"), o200k) == overhead + 85
    # Unknown size (remote URL, unreadable data URL): assumed 1024x1024 -> 765.
    assert count_chat_input(image_body("https://example.com/a.png"), o200k) == overhead + 765
    assert count_chat_input(image_body("data:image/png;base64,!!!!"), o200k) == overhead + 765
    # "auto" counts as "high".
    small = data_url(png(300, 200))
    assert count_chat_input(image_body(small, "auto"), o200k) == overhead + 85 + 170


# ---------------------------------------------------------------------------
# Size cap and lower bound
# ---------------------------------------------------------------------------


def test_max_token_length_bounds_chars_per_token(encoders: Encoders) -> None:
    for name in encoders.names:
        values = encoders.get(name).token_byte_values()
        assert max(map(len, values)) == tokens._MAX_TOKEN_BYTES


def test_within_cap_is_exact(o200k: tiktoken.Encoding) -> None:
    body = {"messages": COOKBOOK_MESSAGES}
    assert measure_chat_input(body, o200k, max_chars=10_000) == InputCount(124, exact=True)


def test_over_cap_gives_a_lower_bound(o200k: tiktoken.Encoding) -> None:
    paragraph = "The gateway counts tokens before forwarding.\nEvery line adds a few more.\n"
    body = {"messages": [user(paragraph * 2000), user("tail " * 5000)]}
    exact = count_chat_input(body, o200k)
    measured = measure_chat_input(body, o200k, max_chars=20_000)
    assert not measured.exact
    assert measured.tokens <= exact
    # The head of the first message was counted exactly, not just bounded by chars.
    assert measured.tokens > 20_000 // 128
    assert measured.is_over(measured.tokens - 1) is True
    assert measured.is_over(exact) is None
    assert measured.is_over(0) is False


def test_characters_alone_prove_an_oversized_body_is_over(o200k: tiktoken.Encoding) -> None:
    body = {"messages": [user("x" * 3_000_000)]}
    started = time.perf_counter()
    measured = measure_chat_input(body, o200k, max_chars=1_000)
    assert time.perf_counter() - started < 1.0  # nothing near 3M chars was tokenized
    assert measured.tokens >= 3_000_000 // 128
    assert measured.is_over(10_000) is True


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab AB1.'\n\r\t/é日-")), max_size=200),
    data=st.data(),
)
def test_newline_letter_split_is_additive(
    encoders: Encoders, text: str, data: st.DataObject
) -> None:
    text = (
        text
        + "\nZ"
        + data.draw(st.text(alphabet=st.sampled_from(list("ab AB1.'\n\r\t/")), max_size=50))
    )
    cut = tokens._safe_split(text, len(text) - 1)
    assert cut > 0
    for name in encoders.names:
        encoding = encoders.get(name)
        assert n_tokens(encoding, text) == n_tokens(encoding, text[:cut]) + n_tokens(
            encoding, text[cut:]
        )


# ---------------------------------------------------------------------------
# Async counting
# ---------------------------------------------------------------------------


class RecordingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_small_prompts_are_counted_inline(o200k: tiktoken.Encoding) -> None:
    executor = RecordingExecutor()
    try:
        counted = await count_chat_input_async(
            {"messages": COOKBOOK_MESSAGES}, o200k, executor=executor
        )
        assert counted == InputCount(124)
        assert executor.submitted == 0
        large = {"messages": [user("word " * 20_000)]}
        counted = await count_chat_input_async(large, o200k, executor=executor)
        assert counted == InputCount(count_chat_input(large, o200k))
        assert executor.submitted == 1
    finally:
        executor.shutdown()


async def _ticks_during(work) -> int:  # type: ignore[no-untyped-def]
    """How many times a busy ticker coroutine got the loop while *work* ran.

    A count, not a clock reading: on a shared 2-core machine the scheduler can
    pause any thread for tens of milliseconds, but a loop blocked by inline
    work cannot tick at all, while a free one ticks thousands of times.
    """
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await work()
    during = ticks - before
    done.set()
    await task
    return during


async def test_large_prompt_does_not_block_the_loop(encoders: Encoders) -> None:
    encoding = encoders.get("o200k_base")
    body = {
        "messages": [user("The quick brown fox jumps over the lazy dog.\nAnd again. " * 60_000)]
    }

    async def offloaded() -> None:
        await count_chat_input_async(
            body, encoding, max_chars=10_000_000, executor=encoders.executor
        )

    async def inline() -> None:
        measure_chat_input(body, encoding, max_chars=10_000_000)

    # Inline, the loop is frozen for the whole count (the baseline that gives
    # the check below its teeth)...
    assert await _ticks_during(inline) <= 1
    # ...offloaded, other coroutines keep running while it counts.
    assert await _ticks_during(offloaded) >= 50


# ---------------------------------------------------------------------------
# Loading: bundled, offline, and equal to tiktoken's own
# ---------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_counting_works_with_the_network_disabled(
    no_network: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("openaipublic.blob.core.windows.net", 443))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    loaded = Encoders.load()
    try:
        body = {"model": "gpt-4o", "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
        assert count_chat_input(body, loaded.for_model("gpt-4o")) == 101
        assert count_chat_input(body, loaded.for_model("gpt-4")) == 105
    finally:
        loaded.close()


# tiktoken caches downloads under the SHA-1 of their URL (see
# /work/shared/tiktoken/README.md); with the files there it never downloads.
TIKTOKEN_CACHE_NAMES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
}


@pytest.mark.parametrize("name", TIKTOKEN_CACHE_NAMES)
def test_bundled_encoding_equals_tiktokens_own(
    encoders: Encoders, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    shutil.copy(ENCODINGS_DIR / f"{name}.tiktoken", tmp_path / TIKTOKEN_CACHE_NAMES[name])
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding(name)
    ours = encoders.get(name)
    assert ours._pat_str == reference._pat_str
    assert ours._special_tokens == reference._special_tokens
    # The ranks as parsed, and as the loaded encoder holds them (every token's bytes).
    parsed = tokens._parse_tiktoken_bpe((ENCODINGS_DIR / f"{name}.tiktoken").read_bytes())
    assert parsed == reference._mergeable_ranks
    assert ours.n_vocab == reference.n_vocab
    assert all(ours.decode_single_token_bytes(rank) == token for token, rank in parsed.items())
    sample = "Hello, 世界! 123456 don't <|endoftext|>\n\n\tcode() {}"
    assert ours.encode(sample, allowed_special="all") == reference.encode(
        sample, allowed_special="all"
    )


def test_bundled_files_are_the_published_ones() -> None:
    for name, spec in tokens._SPECS.items():
        digest = hashlib.sha256((ENCODINGS_DIR / spec.filename).read_bytes()).hexdigest()
        assert digest == spec.sha256, name


def test_loads_when_tiktokens_cache_dir_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoders: Encoders
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    loaded = load_encoding("cl100k_base")
    assert loaded._mergeable_ranks == encoders.get("cl100k_base")._mergeable_ranks


def test_a_tampered_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    data = (ENCODINGS_DIR / "cl100k_base.tiktoken").read_bytes()
    (tmp_path / "cl100k_base.tiktoken").write_bytes(data.replace(b" 100\n", b" 101\n", 1))
    with pytest.raises(ValueError, match="hash mismatch"):
        load_encoding("cl100k_base", tmp_path)


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        load_encoding("p50k_base")


# ---------------------------------------------------------------------------
# Output counting
# ---------------------------------------------------------------------------

# Characters that stress pre-token boundaries: contractions, digit runs, case
# changes, whitespace runs before words, punctuation with newlines and "/",
# combining marks, multi-byte characters split across tokens.
TRICKY = st.lists(
    st.sampled_from(
        [
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "'",
            "s",
            "t",
            "ll",
            "d",
            "A",
            "B",
            "a",
            "b",
            "x",
            "1",
            "2",
            "3",
            ".",
            "/",
            "-",
            "é",
            "\u0301",
            "日",
            "😀",
            "<|endoftext|>",
            "The",
            " quick",
        ]
    ),
    max_size=200,
).map("".join) | st.text(max_size=200)


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, deadline=None)
@given(
    text=TRICKY,
    cuts=st.lists(st.integers(min_value=0), max_size=60),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_streamed_count_equals_one_shot_count(
    encoders: Encoders, text: str, cuts: list[int], name: str
) -> None:
    encoding = encoders.get(name)
    counter = OutputCounter(encoding)
    relayed = []
    for chunk in chunked(text, cuts):
        accepted, reached = counter.feed(chunk)
        assert (accepted, reached) == (chunk, False)
        relayed.append(accepted)
    assert counter.count == n_tokens(encoding, "".join(relayed))


@settings(max_examples=300, deadline=None)
@given(
    text=TRICKY,
    cuts=st.lists(st.integers(min_value=0), max_size=60),
    limit=st.integers(min_value=1, max_value=120),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_limit_cuts_within_the_limit(
    encoders: Encoders, text: str, cuts: list[int], limit: int, name: str
) -> None:
    encoding = encoders.get(name)
    counter = OutputCounter(encoding, limit)
    relayed = ""
    reached = False
    for chunk in chunked(text, cuts):
        accepted, reached = counter.feed(chunk)
        assert chunk.startswith(accepted)
        relayed += accepted
        if reached:
            assert accepted != chunk
            break
    count = n_tokens(encoding, relayed)
    assert counter.count == count <= limit
    assert text.startswith(relayed)
    if reached:
        assert counter.exhausted
        assert counter.feed("more text") == ("", True)
        # The cut gave up at most the tokens of one character split across tokens.
        assert count >= limit - 4
    else:
        assert relayed == text


def test_cut_at_exactly_the_limit(o200k: tiktoken.Encoding) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    for chunk_size in (1, 3, 17, 1000):
        counter = OutputCounter(o200k, 50)
        relayed = ""
        for start in range(0, len(text), chunk_size):
            accepted, reached = counter.feed(text[start : start + chunk_size])
            relayed += accepted
            if reached:
                break
        assert reached
        assert counter.count == n_tokens(o200k, relayed) == 50
        assert relayed == o200k.decode(o200k.encode_ordinary(text)[:50])


def test_channels_are_counted_apart_against_one_limit(o200k: tiktoken.Encoding) -> None:
    counter = OutputCounter(o200k, 30)
    content = "Let me look that up."
    args = '{"location": "Paris, France", "unit": "celsius", "days": 14, "verbose": true}'
    assert counter.feed(content) == (content, False)
    kept = ""
    for start in range(0, len(args), 4):
        accepted, reached = counter.feed(args[start : start + 4], ("tool", 0))
        kept += accepted
        if reached:
            break
    assert reached
    assert counter.channel_count("content") == n_tokens(o200k, content)
    assert counter.channel_count(("tool", 0)) == n_tokens(o200k, kept)
    assert counter.count == n_tokens(o200k, content) + n_tokens(o200k, kept) == 30


def test_unlimited_and_invalid_limits(o200k: tiktoken.Encoding) -> None:
    text = "word " * 1000
    for limit in (None, 0):
        counter = OutputCounter(o200k, limit)
        assert counter.feed(text) == (text, False)
        assert counter.count == n_tokens(o200k, text)
    with pytest.raises(ValueError):
        OutputCounter(o200k, -1)


def test_empty_and_special_and_broken_text(o200k: tiktoken.Encoding) -> None:
    counter = OutputCounter(o200k, 100)
    assert counter.feed("") == ("", False)
    assert counter.feed("<|endoftext|>") == ("<|endoftext|>", False)
    assert counter.count == n_tokens(o200k, "<|endoftext|>")
    accepted, _ = counter.feed("a\ud800b")  # a lone surrogate from a JSON escape
    assert accepted == "a\ufffdb"
    assert counter.count == n_tokens(o200k, "<|endoftext|>a\ufffdb")


def _feed_times(counter: OutputCounter, text: str, step: int) -> list[float]:
    times = []
    for start in range(0, len(text), step):
        started = time.perf_counter()
        counter.feed(text[start : start + step])
        times.append(time.perf_counter() - started)
    return times


def test_cost_per_chunk_does_not_grow_with_the_output(o200k: tiktoken.Encoding) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 4000
    counter = OutputCounter(o200k, 10**9)  # a limit far away: the cheap path
    times = _feed_times(counter, text, 4)
    tenth = len(times) // 10
    # Re-encoding everything would make late chunks ~10x dearer than early ones.
    assert sum(times[-tenth:]) < 3 * sum(times[:tenth])
    assert counter.count == n_tokens(o200k, text)


def test_a_giant_pretoken_stays_cheap_and_counted(o200k: tiktoken.Encoding) -> None:
    # A model stuck repeating one character: a single regex pre-token.
    text = "." * 150_000
    counter = OutputCounter(o200k)
    times = _feed_times(counter, text, 5)
    tenth = len(times) // 10
    assert sum(times[-tenth:]) < 3 * sum(times[:tenth])
    assert counter.count == n_tokens(o200k, text)
    limited = OutputCounter(o200k, 1000)
    relayed = ""
    for start in range(0, len(text), 64):  # about one token per event, as models send
        accepted, reached = limited.feed(text[start : start + 64])
        relayed += accepted
        if reached:
            break
    assert limited.count == n_tokens(o200k, relayed) == 1000


@settings(max_examples=200, deadline=None)
@given(
    text=TRICKY,
    cuts=st.lists(st.integers(min_value=0), max_size=80),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_stable_boundaries_hold_when_committing_constantly(
    encoders: Encoders, text: str, cuts: list[int], name: str
) -> None:
    # Re-split the tail every 8 characters so nearly every chunk boundary is
    # tested as a commit point.
    encoding = encoders.get(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "_COMMIT_CHARS", 8)
        counter = OutputCounter(encoding)
        for chunk in chunked(text, cuts):
            counter.feed(chunk)
    assert counter.count == n_tokens(encoding, text)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize(
    "text",
    [
        "." * 9000,
        " " * 9000 + "x",
        "ab" * 4000,
        "日本" * 3000,
        "😀" * 2000,
        "".join(chr(ord("a") + (i * 7919) % 26) for i in range(9000)),  # one long "word"
    ],
    ids=["dots", "spaces", "ab", "cjk", "emoji", "word"],
)
@pytest.mark.parametrize("step", [1, 7, 64])
def test_giant_pretokens_are_counted_exactly(
    encoders: Encoders, name: str, text: str, step: int
) -> None:
    # Pre-tokens longer than _MAX_UNSTABLE_CHARS are committed at token
    # boundaries kept 2 longest-tokens back from the end; for the runs models
    # degenerate into, that matches one-shot encoding.
    encoding = encoders.get(name)
    counter = OutputCounter(encoding)
    for start in range(0, len(text), step):
        counter.feed(text[start : start + step])
    assert counter.count == n_tokens(encoding, text)


async def test_encodings_load_on_first_use_once_and_off_the_loop() -> None:
    loads: list[str] = []

    def loader(name: str) -> tiktoken.Encoding:
        loads.append(name)
        return tokens.load_encoding(name)

    lazy = Encoders({}, loader=loader)
    try:
        assert lazy.names == ()
        first, second = await asyncio.gather(lazy.aget("cl100k_base"), lazy.aget("cl100k_base"))
        assert first is second
        assert loads == ["cl100k_base"]  # concurrent first uses shared one load
        assert await lazy.aget("cl100k_base") is first
        assert lazy.names == ("cl100k_base",)
        assert len(first.encode_ordinary("hello world")) == 2
        with pytest.raises(KeyError):
            await lazy.aget("p50k_base")
        assert await _ticks_during(lambda: lazy.aget("o200k_base")) >= 10
    finally:
        lazy.close()


async def test_a_failed_load_can_be_retried() -> None:
    attempts = 0

    def flaky(name: str) -> tiktoken.Encoding:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("disk hiccup")
        return tokens.load_encoding(name)

    lazy = Encoders({}, loader=flaky)
    try:
        with pytest.raises(OSError):
            await lazy.aget("o200k_base")
        assert (await lazy.aget("o200k_base")).name == "o200k_base"
    finally:
        lazy.close()

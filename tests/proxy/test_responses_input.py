"""Counting a Responses request: what the conversion to chat counts, by hand.

Figures are hand counts with tiktoken directly and OpenAI's cookbook formula
(3 per message + role + content, 3 priming the reply); the function under test
only supplies the chat-shaped body the gateway counts."""

from __future__ import annotations

from typing import Any

import pytest
import tiktoken

from aigw.proxy.counting import count_chat_input
from aigw.proxy.responses.input import chat_view
from tests.fakes.billing import load_encoding


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return load_encoding("o200k_base")


def t(enc: tiktoken.Encoding, text: str) -> int:
    return len(enc.encode_ordinary(text))


def count(body: dict[str, Any], enc: tiktoken.Encoding) -> int:
    view = chat_view(body)
    assert view.uncountable is None
    return count_chat_input(view.body, enc)


def test_string_input_and_instructions(enc: tiktoken.Encoding) -> None:
    body = {"model": "gpt-4o-mini", "instructions": "Be brief.", "input": "Hello there"}
    expected = (
        (3 + t(enc, "developer") + t(enc, "Be brief."))
        + (3 + t(enc, "user") + t(enc, "Hello there"))
        + 3
    )
    assert count(body, enc) == expected


def test_message_items_with_text_parts(enc: tiktoken.Encoding) -> None:
    body = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
            },
            {"role": "user", "content": "And now?"},
        ]
    }
    expected = (
        3 + t(enc, "user") + t(enc, "Hi")
        + 3 + t(enc, "assistant") + t(enc, "Hello!")
        + 3 + t(enc, "user") + t(enc, "And now?")
        + 3
    )  # fmt: skip
    assert count(body, enc) == expected


def test_reasoning_counts_summary_and_encrypted_content(enc: tiktoken.Encoding) -> None:
    secret = "gAAAAABo" + "x9" * 200
    body = {
        "input": [
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Thinking about foxes"}],
                "encrypted_content": secret,
            }
        ]
    }
    expected = 3 + t(enc, "assistant") + t(enc, "Thinking about foxes") + t(enc, secret) + 3
    assert count(body, enc) == expected


def test_hosted_tool_items_count_as_their_json(enc: tiktoken.Encoding) -> None:
    item = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"q": "fox"}}
    shown = '{"type":"web_search_call","action":{"q":"fox"}}'
    expected = 3 + t(enc, "assistant") + t(enc, shown) + 3
    assert count({"input": [item]}, enc) == expected


def test_function_tools_count_like_chat_tools(enc: tiktoken.Encoding) -> None:
    tool = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
    responses = {"input": "x", "tools": [tool], "tool_choice": {"type": "function", "name": "f"}}
    chat = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
    }
    # The chat request it stands for, counted by the chat rules.
    assert count(responses, enc) == count_chat_input(chat, enc)
    hosted = {"input": "x", "tools": [{"type": "web_search"}]}
    assert (
        count(hosted, enc)
        == (3 + t(enc, "user") + t(enc, "x"))
        + (3 + t(enc, "user") + t(enc, '{"type":"web_search"}'))
        + 3
    )


def test_images_are_priced_never_free(enc: tiktoken.Encoding) -> None:
    with_image = {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/a.png",
                        "detail": "low",
                    },
                ],
            }
        ],
        "model": "gpt-4o",
    }
    without = {
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}]}]
    }
    # OpenAI's published rate: a low-detail image costs 85 tokens on gpt-4o.
    assert count(with_image, enc) - count(without, enc) == 85


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "conversation": {"id": "conv_1"}}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
    ],
)
def test_what_the_gateway_cannot_see_is_named(body: dict[str, Any], field: str) -> None:
    assert chat_view(body).uncountable == field


def test_malformed_shapes_never_raise(enc: tiktoken.Encoding) -> None:
    for body in (
        {"input": [{"type": "message", "role": 5, "content": 7}]},
        {"input": [{"type": "function_call"}], "tools": [1, {"type": "function"}]},
        {"input": None, "text": {"format": "x"}},
    ):
        count_chat_input(chat_view(body).body, enc)

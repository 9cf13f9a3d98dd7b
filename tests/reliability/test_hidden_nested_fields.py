"""Prompt text hidden in fields nested inside known objects (issue 10, item 2, at
every level), through a real server (the app under uvicorn) and raw httpx.

Every field forwarded upstream is counted by a known rule or, when unknown and
able to carry text, as its JSON text: an unknown key inside a known input item,
content part, block, tool definition, tool choice or format, and a known key
that is free only while short (ids, statuses, ``cache_control``, an image's
``detail``) holding a long text. On a key with an input limit of 1,000 (30,000 where the place holds an
image, which alone costs 25,508 tokens on gpt-4o-mini), ~44k
tokens hidden in any such place are refused (400 ``input_token_limit_exceeded``)
and nothing reaches the upstream, on ``/v1/responses``, ``/v1/messages`` (sent
as is to an ``anthropic`` provider) and ``/v1/chat/completions``.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.responses import FakeResponses
from tests.proxy.conftest import (  # noqa: F401
    MODEL,
    InLoopUpstream,
    create_provider,
    gateway,
    ready_key,
    upstream,
)
from tests.reliability.conftest import CLAUDE

JSON = {"content-type": "application/json"}
# 4,000 sentences of 10 words: at least 40,000 tokens (a word is at least one token).
HIDDEN = "The quick brown fox jumps over the lazy dog again. " * 4_000
LIMIT = 1_000
# Places holding an image: one costs 25,508 tokens on gpt-4o-mini (1024x1024), so
# those use a key whose limit is above it and still under HIDDEN.
IMAGE_LIMIT = 30_000
IMAGE_PLACES = frozenset(
    {"input_image_part_unknown_key", "input_image_long_detail"}
    | {"image_part_long_detail", "image_part_detail_object"}
)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def _spread(text: str) -> dict[str, dict[str, str]]:
    """*text* in pieces no longer than 64 characters, two objects deep (at most
    64 keys each): every value "short" and "plain" on its own."""
    pieces = [text[i : i + 51] for i in range(0, len(text), 51)]
    rows = [pieces[i : i + 64] for i in range(0, len(pieces), 64)]
    assert len(rows) <= 64
    return {f"k{r}": {f"j{c}": piece for c, piece in enumerate(row)} for r, row in enumerate(rows)}


SPREAD = _spread(HIDDEN)


def test_hidden_text_is_at_least_40k_tokens() -> None:
    assert len(HIDDEN.split()) >= 40_000
    assert "".join(v for row in SPREAD.values() for v in row.values()) == HIDDEN


def _message(content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": content, **extra}


RESPONSES_PLACES: dict[str, dict[str, Any]] = {
    "message_item_unknown_key": {"input": [_message("hi", note=HIDDEN)]},
    "message_item_long_id": {"input": [_message("hi", id=HIDDEN)]},
    "message_item_long_status": {"input": [_message("hi", status=HIDDEN)]},
    "input_text_part_unknown_key": {
        "input": [_message([{"type": "input_text", "text": "hi", "note": HIDDEN}])]
    },
    "input_image_part_unknown_key": {
        "input": [
            _message(
                [{"type": "input_image", "image_url": "https://example.com/a.png", "x": HIDDEN}]
            )
        ]
    },
    "input_image_long_detail": {
        "input": [
            _message(
                [
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/a.png",
                        "detail": HIDDEN,
                    }
                ]
            )
        ]
    },
    "output_text_annotations": {
        "input": [
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "ok",
                        "annotations": [{"type": "note", "text": HIDDEN}],
                    }
                ],
            },
            _message("hi"),
        ]
    },
    "function_call_item_unknown_key": {
        "input": [
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "f",
                "arguments": "{}",
                "note": HIDDEN,
            },
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ]
    },
    "function_call_output_unknown_key": {
        "input": [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok", "note": HIDDEN},
        ]
    },
    "function_call_long_call_id": {
        "input": [
            {"type": "function_call", "call_id": HIDDEN, "name": "f", "arguments": "{}"},
        ]
    },
    "reasoning_item_unknown_key": {
        "input": [{"type": "reasoning", "summary": [], "note": HIDDEN}, _message("hi")]
    },
    "reasoning_summary_part_unknown_key": {
        "input": [
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "s", "note": HIDDEN}],
            },
            _message("hi"),
        ]
    },
    "function_tool_unknown_key": {
        "input": "hi",
        "tools": [{"type": "function", "name": "f", "parameters": SCHEMA, "examples": HIDDEN}],
    },
    "function_tool_long_strict": {
        "input": "hi",
        "tools": [{"type": "function", "name": "f", "parameters": SCHEMA, "strict": HIDDEN}],
    },
    "tool_choice_unknown_shape": {
        "input": "hi",
        "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [], "note": HIDDEN},
    },
    "tool_choice_function_unknown_key": {
        "input": "hi",
        "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
        "tool_choice": {"type": "function", "name": "f", "note": HIDDEN},
    },
    "text_format_description": {
        "input": "hi",
        "text": {
            "format": {"type": "json_schema", "name": "x", "schema": SCHEMA, "description": HIDDEN}
        },
    },
    "text_format_unknown_key": {
        "input": "hi",
        "text": {"format": {"type": "json_object", "note": HIDDEN}},
    },
    "text_unknown_key": {"input": "hi", "text": {"verbosity": "low", "note": HIDDEN}},
    # Short pieces, two levels deep: a setting is free one level deep only.
    "metadata_spread_two_deep": {"input": "hi", "metadata": SPREAD},
    "reasoning_spread_two_deep": {"input": "hi", "reasoning": SPREAD},
}


async def test_responses_text_nested_in_known_objects_counts(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    keys = {
        limit: (await ready_key(openai_app, input_limit=limit))["token"]
        for limit in (LIMIT, IMAGE_LIMIT)
    }
    headers = {**JSON, "Authorization": f"Bearer {keys[LIMIT]}"}
    failures = []
    async with httpx.AsyncClient(base_url=openai_app.url, timeout=30) as http:
        for place, body in RESPONSES_PLACES.items():
            token = keys[IMAGE_LIMIT if place in IMAGE_PLACES else LIMIT]
            response = await http.post(
                "/v1/responses",
                content=orjson.dumps({"model": MODEL, **body}),
                headers={**JSON, "Authorization": f"Bearer {token}"},
            )
            error = response.json().get("error") if response.status_code == 400 else None
            if not error or error.get("code") != "input_token_limit_exceeded":
                failures.append((place, response.status_code, response.text[:200]))
        # The same shapes with short values pass: nothing is counted that is not there.
        ok = await http.post(
            "/v1/responses",
            content=orjson.dumps(
                {
                    "model": MODEL,
                    "input": [_message([{"type": "input_text", "text": "hi"}], id="msg_1")],
                    "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
                    "tool_choice": {"type": "function", "name": "f"},
                    "text": {"format": {"type": "json_object"}, "verbosity": "low"},
                }
            ),
            headers=headers,
        )
        assert ok.status_code == 200, ok.text
    assert not failures, failures
    assert len(fake_responses.requests) == 1


def _block(**fields: Any) -> dict[str, Any]:
    return fields


MESSAGES_PLACES: dict[str, dict[str, Any]] = {
    "message_unknown_key": {"messages": [{"role": "user", "content": "hi", "note": HIDDEN}]},
    "text_block_unknown_key": {
        "messages": [{"role": "user", "content": [_block(type="text", text="hi", note=HIDDEN)]}]
    },
    "text_block_citations": {
        "messages": [
            {
                "role": "user",
                "content": [
                    _block(
                        type="text",
                        text="hi",
                        citations=[{"type": "char_location", "cited_text": HIDDEN}],
                    )
                ],
            }
        ]
    },
    "text_block_cache_control_text": {
        "messages": [
            {
                "role": "user",
                "content": [
                    _block(type="text", text="hi", cache_control={"type": "ephemeral", "x": HIDDEN})
                ],
            }
        ]
    },
    "image_source_unknown_key": {
        "messages": [
            {
                "role": "user",
                "content": [
                    _block(
                        type="image",
                        source={"type": "url", "url": "https://example.com/a.png", "x": HIDDEN},
                    ),
                    _block(type="text", text="hi"),
                ],
            }
        ]
    },
    "tool_use_unknown_key": {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [_block(type="tool_use", id="t1", name="f", input={}, note=HIDDEN)],
            },
            {
                "role": "user",
                "content": [_block(type="tool_result", tool_use_id="t1", content="ok")],
            },
        ]
    },
    "tool_result_unknown_key": {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [_block(type="tool_use", id="t1", name="f", input={})],
            },
            {
                "role": "user",
                "content": [
                    _block(type="tool_result", tool_use_id="t1", content="ok", note=HIDDEN)
                ],
            },
        ]
    },
    "tool_result_text_part_unknown_key": {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [_block(type="tool_use", id="t1", name="f", input={})],
            },
            {
                "role": "user",
                "content": [
                    _block(
                        type="tool_result",
                        tool_use_id="t1",
                        content=[{"type": "text", "text": "ok", "note": HIDDEN}],
                    )
                ],
            },
        ]
    },
    "tool_result_long_id": {
        "messages": [
            {"role": "user", "content": [_block(type="tool_result", tool_use_id=HIDDEN)]},
        ]
    },
    "system_text_block_unknown_key": {
        "system": [{"type": "text", "text": "be brief", "note": HIDDEN}],
    },
    "custom_tool_unknown_key": {
        "tools": [{"name": "f", "input_schema": SCHEMA, "input_examples": [{"city": HIDDEN}]}],
    },
    "tool_choice_unknown_key": {
        "tools": [{"name": "f", "input_schema": SCHEMA}],
        "tool_choice": {"type": "auto", "note": HIDDEN},
    },
    "tool_choice_unmapped_without_tools": {"tool_choice": {"type": "none", "x": HIDDEN}},
    # Short pieces, two levels deep: free settings and flags are one level deep only.
    "cache_control_spread_two_deep": {
        "messages": [
            {"role": "user", "content": [_block(type="text", text="hi", cache_control=SPREAD)]}
        ]
    },
    "metadata_spread_two_deep": {"metadata": SPREAD},
    "thinking_spread_two_deep": {"thinking": SPREAD},
}


async def test_messages_text_nested_in_known_objects_counts(
    anthropic_app: Any, fake_anthropic: tuple[FakeAnthropic, str]
) -> None:
    state, _ = fake_anthropic
    key = await ready_key(anthropic_app, model=CLAUDE, input_limit=LIMIT)
    headers = {**JSON, "x-api-key": key["token"]}
    base: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    failures = []
    async with httpx.AsyncClient(base_url=anthropic_app.url, timeout=30) as http:
        for place, extra in MESSAGES_PLACES.items():
            body = orjson.dumps({**base, **extra})
            response = await http.post("/v1/messages", content=body, headers=headers)
            error = response.json().get("error") if response.status_code == 400 else None
            # Anthropic's error shape: the limit is named in the message.
            message = error.get("message", "") if error else ""
            if not error or f"this key allows {LIMIT}" not in message:
                failures.append((place, response.status_code, response.text[:200]))
        ok = await http.post(
            "/v1/messages",
            content=orjson.dumps(
                {
                    **base,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                _block(type="text", text="hi", cache_control={"type": "ephemeral"})
                            ],
                        }
                    ],
                    "tools": [{"name": "f", "input_schema": SCHEMA}],
                    "tool_choice": {"type": "auto"},
                }
            ),
            headers=headers,
        )
        assert ok.status_code == 200, ok.text
    assert not failures, failures
    assert len(state.recorded.requests) == 1


CHAT_PLACES: dict[str, dict[str, Any]] = {
    "text_part_cache_control_text": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi", "cache_control": {"type": "x", "n": HIDDEN}}
                ],
            }
        ]
    },
    "image_part_long_detail": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/a.png", "detail": HIDDEN},
                    }
                ],
            }
        ]
    },
    "image_part_detail_object": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/a.png", "detail": [HIDDEN]},
                    }
                ],
            }
        ]
    },
}


async def test_chat_text_nested_in_known_objects_counts(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    keys = {
        limit: (await ready_key(openai_app, input_limit=limit))["token"]
        for limit in (LIMIT, IMAGE_LIMIT)
    }
    failures = []
    async with httpx.AsyncClient(base_url=openai_app.url, timeout=30) as http:
        for place, body in CHAT_PLACES.items():
            token = keys[IMAGE_LIMIT if place in IMAGE_PLACES else LIMIT]
            response = await http.post(
                "/v1/chat/completions",
                content=orjson.dumps({"model": MODEL, **body}),
                headers={**JSON, "Authorization": f"Bearer {token}"},
            )
            error = response.json().get("error") if response.status_code == 400 else None
            if not error or error.get("code") != "input_token_limit_exceeded":
                failures.append((place, response.status_code, response.text[:200]))
    assert not failures, failures
    assert not fake_responses.requests

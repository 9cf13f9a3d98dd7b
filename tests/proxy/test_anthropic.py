"""``kind: anthropic`` providers: Chat Completions in, the Messages API upstream,
Chat Completions back, through the official openai SDK (in process, against an
in-loop fake of the Messages API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from aigw.proxy.adapters.anthropic import to_messages_request
from tests.proxy.conftest import create_provider, pieces, ready_key, sdk, usage_rows

MODEL = "claude-sonnet-4-5"


class FakeMessages:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.tokens = 8
        self.tool = False
        self.status = 200

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return web.json_response(
                {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
                status=self.status,
            )
        count = min(self.tokens, body["max_tokens"])
        words = pieces(count)
        stop = "max_tokens" if count < self.tokens else ("tool_use" if self.tool else "end_turn")
        usage = {"input_tokens": 11, "output_tokens": count}
        if not body.get("stream"):
            block = (
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "lookup",
                    "input": {"q": "".join(words)},
                }
                if self.tool
                else {"type": "text", "text": "".join(words)}
            )
            return web.json_response(
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [block],
                    "stop_reason": stop,
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await response.write(
                b"event: "
                + name.encode()
                + b"\ndata: "
                + orjson.dumps({"type": name, **data})
                + b"\n\n"
            )

        await event(
            "message_start",
            {
                "message": {
                    "id": "msg_1",
                    "model": MODEL,
                    "usage": {"input_tokens": 11, "output_tokens": 1},
                }
            },
        )
        if self.tool:
            await event(
                "content_block_start",
                {
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "lookup",
                        "input": {},
                    },
                },
            )
            for word in words:
                await event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "input_json_delta", "partial_json": word}},
                )
        else:
            await event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            )
            await event("ping", {})
            for word in words:
                await event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": word}},
                )
        await event("content_block_stop", {"index": 0})
        await event(
            "message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": count}}
        )
        await event("message_stop", {})
        await response.write_eof()
        return response


@pytest.fixture
async def messages_api() -> AsyncIterator[FakeMessages]:
    fake = FakeMessages()
    application = web.Application()
    application.router.add_post("/v1/messages", fake.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]
    yield fake
    await runner.cleanup()


@pytest.fixture
async def app(gateway: Any, messages_api: FakeMessages) -> Any:
    app = await gateway()
    await create_provider(
        app.admin, messages_api.url, name="claude", kind="anthropic", models=(MODEL,)
    )
    return app


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fox."},
]


async def test_completion_and_stream(app: Any, messages_api: FakeMessages, db: str) -> None:
    key = await ready_key(app, provider="claude", model=MODEL)
    client = sdk(app, key["token"])
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content == "".join(pieces(8))
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    sent = messages_api.requests[-1]
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Name a fox."}]}
    ]
    assert sent["max_tokens"] == 4096
    assert messages_api.headers[-1]["x-api-key"].startswith("sk-upstream-")
    assert messages_api.headers[-1]["anthropic-version"] == "2023-06-01"

    chunks = [
        c
        async for c in await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(pieces(8))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    rows = await usage_rows(db, expected=2)
    assert [(r["outcome"], r["upstream_output_tokens"]) for r in rows] == [
        ("completed", 8),
        ("completed", 8),
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_output_limit_and_tools(app: Any, messages_api: FakeMessages, stream: bool) -> None:
    messages_api.tool = True
    messages_api.tokens = 30
    # 10: the call's name and framing take 5 of them (aigw.proxy.accounting.TOOL_CALL_TOKENS).
    key = await ready_key(app, provider="claude", model=MODEL, output_limit=10)
    client = sdk(app, key["token"])
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    if stream:
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=tools, tool_choice="required", stream=True
            )
        ]
        calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
        assert calls[0].function.name == "lookup" and calls[0].id == "toolu_1"
        arguments = "".join(call.function.arguments or "" for call in calls if call.function)
        finish = [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]
        assert chunks[-1].usage is None  # not asked for: stripped
    else:
        completion = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=tools, tool_choice="required"
        )
        (call,) = completion.choices[0].message.tool_calls or []
        arguments = call.function.arguments  # type: ignore[union-attr]
        finish = [completion.choices[0].finish_reason]
    assert finish == ["length"]
    sent = messages_api.requests[-1]
    assert sent["max_tokens"] == 10  # the key's output limit, asked of the upstream
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["tools"] == [{"name": "lookup", "input_schema": {"type": "object"}}]
    assert arguments  # what the upstream made within the limit


async def test_upstream_errors_in_openai_envelope(app: Any, messages_api: FakeMessages) -> None:
    messages_api.status = 429
    key = await ready_key(app, provider="claude", model=MODEL)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "overloaded_error" and caught.value.message.endswith("busy")


def test_request_translation() -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "rules"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "42"},
            {"role": "user", "content": "and?"},
        ],
        "stop": "END",
        "temperature": 0.2,
        "max_completion_tokens": 50,
        "user": "u-1",
        "logit_bias": {"1": 2},
    }
    request = to_messages_request(body)
    assert request["system"] == "rules"
    assert request["max_tokens"] == 50 and request["stop_sequences"] == ["END"]
    assert request["metadata"] == {"user_id": "u-1"} and "logit_bias" not in request
    user, assistant, results = request["messages"]
    assert user["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAAA",
    }
    assert assistant["content"] == [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}
    ]
    # The tool result and the next user turn merge into one user turn.
    assert results["role"] == "user"
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
        {"type": "text", "text": "and?"},
    ]

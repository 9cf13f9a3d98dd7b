"""SPEC §3's policy table through the real app and the official ``openai``
SDK, every cell at limit-1, limit and limit+1.

Input boundaries are set from published figures, not from aigw's counter: the
conversation is the one OpenAI's cookbook bills at 124 prompt tokens on
gpt-4o / gpt-4o-mini and 129 on gpt-4. Whole answers go through the app in
process; streamed ones through a real uvicorn server, since
``httpx.ASGITransport`` buffers the whole body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest

from tests.fakes.billing import load_encoding
from tests.proxy.conftest import (
    MODEL,
    create_provider,
    openai_http_client,
    ready_key,
    sdk,
    serve,
    usage_rows,
)
from tests.proxy.counting.published import COOKBOOK_MESSAGES, COOKBOOK_MESSAGES_PROMPT_TOKENS

MESSAGES = COOKBOOK_MESSAGES
PROMPT_TOKENS = COOKBOOK_MESSAGES_PROMPT_TOKENS[MODEL]  # 124, OpenAI's published figure
GPT4 = "gpt-4"  # counted with cl100k_base: the same conversation is 129 tokens


@pytest.fixture
async def app(gateway: Any, upstream: Any) -> Any:
    app = await gateway()
    await create_provider(app.admin, upstream.url, models=(MODEL, GPT4))
    return app


@pytest.fixture
async def served(app: Any) -> AsyncIterator[Callable[[str], openai.AsyncOpenAI]]:
    """The same app behind a real uvicorn server; yields an SDK client factory."""
    clients: list[openai.AsyncOpenAI] = []
    async with serve(app) as url:

        def client(token: str) -> openai.AsyncOpenAI:
            clients.append(
                openai.AsyncOpenAI(
                    base_url=f"{url}/v1",
                    api_key=token,
                    max_retries=0,
                    http_client=openai_http_client(),
                )
            )
            return clients[-1]

        yield client
        for opened in clients:
            await opened.close()


def relayed_tokens(app: Any, text: str) -> int:
    return len(app.state.encoders.get("o200k_base").encode_ordinary(text))


# -- input over the input limit ----------------------------------------------------


@pytest.mark.parametrize("model", [MODEL, GPT4])
@pytest.mark.parametrize(("offset", "over"), [(-1, False), (0, False), (1, True)])
async def test_reject_input(
    app: Any, upstream: Any, db: str, model: str, offset: int, over: bool
) -> None:
    n = COOKBOOK_MESSAGES_PROMPT_TOKENS[model]  # 124 or 129, as OpenAI bills it
    key = await ready_key(app, model=model, input_limit=n - offset)  # n = L-1, L, L+1
    client = sdk(app, key["token"])
    if over:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=model, messages=MESSAGES)
        assert caught.value.code == "input_token_limit_exceeded"
        assert caught.value.response.headers["x-aigw-input-tokens"] == str(n)
        assert upstream.requests == []  # nothing went upstream
        (row,) = await usage_rows(db)
        assert row["outcome"] == "rejected" and row["error_code"] == "input_token_limit_exceeded"
        assert row["input_tokens"] == n and row["input_limit_exceeded"] is True
        return
    raw = await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert raw.headers["x-aigw-input-tokens"] == str(n)
    assert raw.headers["x-aigw-input-limit"] == str(n - offset)
    assert raw.headers["x-aigw-usage-limit"] == "reject"
    assert "x-aigw-limit-exceeded" not in raw.headers
    assert raw.parse().choices[0].finish_reason == "stop"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(("offset", "over"), [(-1, False), (0, False), (1, True)])
async def test_use_anyway_input(app: Any, upstream: Any, db: str, offset: int, over: bool) -> None:
    # An unknown field is counted as its compact JSON text (docs/proxy.md, "Input counting").
    n = PROMPT_TOKENS + len(load_encoding("o200k_base").encode('{"unknown_field":{"kept":true}}'))
    key = await ready_key(app, input_limit=n - offset, usage_limit="use_anyway")
    client = sdk(app, key["token"])
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, extra_body={"unknown_field": {"kept": True}}
    )
    assert raw.headers.get("x-aigw-limit-exceeded") == ("input" if over else None)
    assert raw.headers["x-aigw-usage-limit"] == "use_anyway"
    # Forwarded unchanged (unknown fields too).
    assert upstream.last == {"model": MODEL, "messages": MESSAGES, "unknown_field": {"kept": True}}
    (row,) = await usage_rows(db)
    assert row["outcome"] == "completed" and row["input_limit_exceeded"] is over


# -- requested max over the output limit ------------------------------------------------

L = 10


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize(("requested", "over"), [(L - 1, False), (L, False), (L + 1, True)])
async def test_reject_requested_max(
    app: Any, upstream: Any, db: str, field: str, requested: int, over: bool
) -> None:
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    if over:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, **{field: requested}
            )
        assert caught.value.code == "output_token_limit_exceeded"
        assert caught.value.param == field
        assert upstream.requests == []
        (row,) = await usage_rows(db)
        assert row["outcome"] == "rejected" and row["output_limit_exceeded"] is True
        return
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, **{field: requested})
    assert upstream.last[field] == requested  # the client's own bound, untouched
    assert "max_tokens" not in upstream.last or field == "max_tokens"


@pytest.mark.parametrize(("requested", "over"), [(L - 1, False), (L, False), (L + 1, True)])
async def test_use_anyway_requested_max(
    app: Any, upstream: Any, db: str, requested: int, over: bool
) -> None:
    key = await ready_key(app, output_limit=L, usage_limit="use_anyway")
    client = sdk(app, key["token"])
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=requested
    )
    assert raw.headers.get("x-aigw-limit-exceeded") == ("output" if over else None)
    assert upstream.last["max_tokens"] == requested
    (row,) = await usage_rows(db)
    assert row["output_limit_exceeded"] is over


# -- no max given, output limit set --------------------------------------------------


async def test_reject_without_max_asks_upstream_for_the_limit(app: Any, upstream: Any) -> None:
    key = await ready_key(app, output_limit=L)
    await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert upstream.last["max_tokens"] == L
    assert "max_completion_tokens" not in upstream.last


async def test_use_anyway_without_max_is_forwarded_unchanged(app: Any, upstream: Any) -> None:
    key = await ready_key(app, output_limit=L, usage_limit="use_anyway")
    await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert "max_tokens" not in upstream.last and "max_completion_tokens" not in upstream.last


# -- generated output reaching the limit (an upstream that ignores max_tokens) ------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("generated", "cut"), [(L - 1, False), (L, False), (L + 1, True)])
async def test_reject_cuts_output_at_exactly_the_limit(
    app: Any,
    served: Callable[[str], openai.AsyncOpenAI],
    upstream: Any,
    db: str,
    stream: bool,
    generated: int,
    cut: bool,
) -> None:
    upstream.script.output_tokens = generated
    upstream.script.honour_max_tokens = False
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    if stream:
        chunks = [
            chunk
            async for chunk in await served(key["token"]).chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            )
        ]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]
        assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    else:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        text = completion.choices[0].message.content or ""
        finish = [completion.choices[0].finish_reason]
        if cut:
            assert completion.usage is not None and completion.usage.completion_tokens == L
    assert relayed_tokens(app, text) == min(generated, L)
    assert finish == (["length"] if cut else ["stop"])
    (row,) = await usage_rows(db)
    assert row["outcome"] == ("truncated" if cut else "completed")
    assert row["output_tokens"] == min(generated, L)
    if stream and not cut:
        assert row["upstream_output_tokens"] == generated  # the stripped usage chunk was read


async def test_stream_cut_keeps_usage_when_asked(
    app: Any, served: Callable[[str], openai.AsyncOpenAI], upstream: Any
) -> None:
    upstream.script.output_tokens = 50
    upstream.script.honour_max_tokens = False
    key = await ready_key(app, output_limit=L)
    stream = await served(key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == L
    # The gateway's own input count replaces the upstream's (the in-loop fake says 42).
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS


async def test_cut_inside_tool_call_arguments(
    app: Any, served: Callable[[str], openai.AsyncOpenAI], upstream: Any
) -> None:
    upstream.script.output_tokens = 30
    upstream.script.honour_max_tokens = False
    upstream.script.tool_call = True
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    (call,) = completion.choices[0].message.tool_calls or []
    # The call's name "f" (1 token) and its framing (4, from OpenAI's published
    # example: see aigw.proxy.accounting.TOOL_CALL_TOKENS) count against L too.
    assert relayed_tokens(app, call.function.arguments) == L - 5  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "length"
    chunks = [
        c
        async for c in await served(key["token"]).chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True
        )
    ]
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or []
        if call.function
    )
    assert relayed_tokens(app, arguments) == L - 5
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
async def test_use_anyway_output_is_delivered_in_full_and_flagged(
    app: Any, served: Callable[[str], openai.AsyncOpenAI], upstream: Any, db: str, stream: bool
) -> None:
    upstream.script.output_tokens = L + 5
    key = await ready_key(app, output_limit=L, usage_limit="use_anyway")
    client = sdk(app, key["token"])
    if stream:
        response = await served(key["token"]).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, stream=True
        )
        text = "".join(
            [c.choices[0].delta.content or "" async for c in response.parse() if c.choices]
        )
    else:
        response = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES
        )
        text = response.parse().choices[0].message.content or ""
        # Known before the headers go out only when not streaming.
        assert response.headers["x-aigw-limit-exceeded"] == "output"
    assert relayed_tokens(app, text) == L + 5
    (row,) = await usage_rows(db)
    assert row["outcome"] == "completed" and row["output_limit_exceeded"] is True


async def test_reasoning_models_get_max_completion_tokens(gateway: Any, upstream: Any) -> None:
    app = await gateway()
    await create_provider(app.admin, upstream.url, name="o", models=("o3-mini",))
    key = await ready_key(app, provider="o", model="o3-mini", output_limit=L)
    await sdk(app, key["token"]).chat.completions.create(model="o3-mini", messages=MESSAGES)
    assert upstream.last["max_completion_tokens"] == L and "max_tokens" not in upstream.last

"""``POST /v1/messages``: Anthropic's Messages API in, through a real uvicorn
server, with the official ``anthropic`` SDK as the client, to an ``anthropic``
provider (natively: a fake of the Messages API) and to an ``openai`` provider
(translated: the in-loop Chat Completions fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.fakes.anthropic import INPUT_TOKENS, FakeAnthropic
from tests.fakes.billing import load_encoding
from tests.fakes.wire import serve_in_loop, words
from tests.proxy.conftest import (
    ANTHROPIC_SDK_GROUP,
    MODEL,
    InLoopUpstream,
    client_tls,
    create_provider,
    ready_key,
    usage_rows,
)

if TYPE_CHECKING:
    import anthropic

pytestmark = pytest.mark.xdist_group(ANTHROPIC_SDK_GROUP)

CLAUDE = "claude-sonnet-4-5"
L = 5
SYSTEM = "Be brief."
PROMPT = [{"role": "user", "content": "Name a fox."}]


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    async with serve_in_loop(fake.app()) as url:
        yield fake, url + "/v1"


class Target:
    """One provider kind behind the gateway, and how to script its fake."""

    def __init__(self, kind: str, model: str, fake: Any) -> None:
        self.kind, self.model, self.fake = kind, model, fake

    def script(self, *, output_tokens: int, honour: bool = True, tool: bool = False) -> None:
        self.fake.script.output_tokens = output_tokens
        self.fake.script.honour_max_tokens = honour
        self.fake.script.tool_call = tool

    @property
    def requests(self) -> list[dict[str, Any]]:
        if self.kind == "anthropic":
            return list(self.fake.recorded.requests)
        return list(self.fake.requests)


@pytest.fixture(params=["anthropic", "openai"])
async def target(
    request: pytest.FixtureRequest,
    gateway: Any,
    fake_anthropic: tuple[FakeAnthropic, str],
    upstream: InLoopUpstream,
) -> tuple[Any, Target]:
    app = await gateway()
    if request.param == "anthropic":
        fake, url = fake_anthropic
        await create_provider(app.admin, url, name="p", kind="anthropic", models=(CLAUDE,))
        return app, Target("anthropic", CLAUDE, fake)
    await create_provider(app.admin, upstream.url, name="p", kind="openai", models=(MODEL,))
    return app, Target("openai", MODEL, upstream)


def client(app: Any, token: str, **kwargs: Any) -> anthropic.AsyncAnthropic:
    import anthropic  # here: see ANTHROPIC_SDK_GROUP

    return anthropic.AsyncAnthropic(
        base_url=app.url, api_key=token, max_retries=0, http_client=http_client(), **kwargs
    )


def http_client() -> Any:
    """The SDK's own default HTTP client, on this process's one TLS context."""
    from anthropic._base_client import AsyncHttpxClientWrapper

    return AsyncHttpxClientWrapper(verify=client_tls())


def prompt_tokens(model: str) -> int:
    """OpenAI's cookbook formula, by hand: 3 per message + the tokens of its role and
    text, 3 priming the reply (the gateway counts a Messages request as the chat
    request it stands for, ``system`` as a first system message)."""
    encoding = load_encoding("o200k_base")
    system = 3 + len(encoding.encode("system")) + len(encoding.encode(SYSTEM))
    user = 3 + len(encoding.encode("user")) + len(encoding.encode("Name a fox."))
    return system + user + 3


async def test_create_and_stream(target: tuple[Any, Target], db: str) -> None:
    app, t = target
    t.script(output_tokens=8)
    key = await ready_key(app, provider="p", model=t.model)
    sdk = client(app, key["token"])
    message = await sdk.messages.create(
        model=t.model, max_tokens=100, system=SYSTEM, messages=PROMPT
    )
    assert message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "".join(words(8))  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 8
    sent = t.requests[-1]
    if t.kind == "anthropic":
        # Natively: the client's body as sent.
        assert sent["system"] == SYSTEM and sent["messages"] == PROMPT
        assert sent["max_tokens"] == 100
        assert message.usage.input_tokens == INPUT_TOKENS
    else:
        assert sent["messages"] == [{"role": "system", "content": SYSTEM}, *PROMPT]
        assert sent["max_tokens"] == 100

    async with sdk.messages.stream(
        model=t.model, max_tokens=100, system=SYSTEM, messages=PROMPT
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "".join(words(8))
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 8
    rows = await usage_rows(db, expected=2)
    assert [(r["outcome"], r["stream"], r["output_tokens"]) for r in rows] == [
        ("completed", False, 8),
        ("completed", True, 8),
    ]
    assert rows[0]["input_tokens"] == prompt_tokens(t.model)


async def raw_events(app: Any, token: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=10) as http,
        http.stream("POST", "/v1/messages", json=body, headers={"x-api-key": token}) as response,
    ):
        assert response.status_code == 200
        text = (await response.aread()).decode()
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], lines["data"]))
    return events


@pytest.mark.parametrize("stream", [False, True])
async def test_policy_table_output(target: tuple[Any, Target], db: str, stream: bool) -> None:
    """max_tokens is the requested output: L-1 and L pass, L+1 is refused under
    reject (nothing sent upstream) and forwarded, flagged, under use_anyway."""
    import anthropic  # here: see ANTHROPIC_SDK_GROUP

    app, t = target
    t.script(output_tokens=3)
    key = await ready_key(app, provider="p", model=t.model, output_limit=L)
    sdk = client(app, key["token"])

    async def ask(sdk: anthropic.AsyncAnthropic, max_tokens: int) -> Any:
        if stream:
            async with sdk.messages.stream(
                model=t.model, max_tokens=max_tokens, messages=PROMPT
            ) as s:
                return await s.get_final_message()
        return await sdk.messages.create(model=t.model, max_tokens=max_tokens, messages=PROMPT)

    for max_tokens in (L - 1, L):
        assert (await ask(sdk, max_tokens)).stop_reason == "end_turn"
    sent = len(t.requests)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await ask(sdk, L + 1)
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "output_token_limit_exceeded"
    assert len(t.requests) == sent  # nothing went upstream

    anyway = await ready_key(
        app, provider="p", model=t.model, output_limit=L, usage_limit="use_anyway"
    )
    t.script(output_tokens=L + 3)
    raw = await client(app, anyway["token"]).messages.with_raw_response.create(
        model=t.model, max_tokens=L + 1, messages=PROMPT
    )
    assert raw.headers["x-aigw-limit-exceeded"] == "output"
    assert (await raw.parse()).usage.output_tokens == L + 1  # the upstream honoured L+1: delivered
    rows = await usage_rows(db, expected=4)
    assert [r["error_code"] for r in rows if r["outcome"] == "rejected"] == [
        "output_token_limit_exceeded"
    ]


async def test_cut_at_exactly_l(target: tuple[Any, Target], db: str) -> None:
    """An upstream that runs past max_tokens = L is cut by the gateway at exactly
    L tokens: stop_reason max_tokens, a well-formed message_delta / message_stop."""
    app, t = target
    t.script(output_tokens=3 * L, honour=False)
    key = await ready_key(app, provider="p", model=t.model, output_limit=L)
    sdk = client(app, key["token"])
    message = await sdk.messages.create(model=t.model, max_tokens=L, messages=PROMPT)
    assert message.content[0].text == "".join(words(L))  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == L

    async with sdk.messages.stream(model=t.model, max_tokens=L, messages=PROMPT) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "".join(words(L))
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == L

    events = await raw_events(
        app,
        key["token"],
        {"model": t.model, "max_tokens": L, "messages": PROMPT, "stream": True},
    )
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[1] == "content_block_start"
    assert names.count("content_block_delta") == L
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert '"stop_reason":"max_tokens"' in events[-2][1]
    assert f'"output_tokens":{L}' in events[-2][1]
    rows = await usage_rows(db, expected=3)
    assert [(r["outcome"], r["output_tokens"]) for r in rows] == [("truncated", L)] * 3


async def test_input_limit(target: tuple[Any, Target], db: str) -> None:
    import anthropic  # here: see ANTHROPIC_SDK_GROUP

    app, t = target
    t.script(output_tokens=2)
    n = prompt_tokens(t.model)
    for limit, allowed in ((n - 1, False), (n, True), (n + 1, True)):
        key = await ready_key(app, provider="p", model=t.model, input_limit=limit)
        sdk = client(app, key["token"])
        if allowed:
            message = await sdk.messages.create(
                model=t.model, max_tokens=10, system=SYSTEM, messages=PROMPT
            )
            assert message.stop_reason == "end_turn"
            continue
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.create(model=t.model, max_tokens=10, system=SYSTEM, messages=PROMPT)
        assert refused.value.body["error"]["code"] == "input_token_limit_exceeded"  # type: ignore[index]
        counted = await sdk.messages.count_tokens(model=t.model, system=SYSTEM, messages=PROMPT)
        assert counted.input_tokens == n


async def test_tools(target: tuple[Any, Target]) -> None:
    app, t = target
    t.script(output_tokens=4, tool=True)
    key = await ready_key(app, provider="p", model=t.model)
    sdk = client(app, key["token"])
    tools: Any = [{"name": "lookup", "description": "Find", "input_schema": {"type": "object"}}]
    ask: Any = {
        "model": t.model,
        "max_tokens": 50,
        "messages": PROMPT,
        "tools": tools,
        "tool_choice": {"type": "any"},
    }
    message = await sdk.messages.create(**ask)
    assert [block.type for block in message.content] == ["tool_use"]
    # The chat fake ends tool calls with finish_reason "stop" (→ end_turn).
    stop = "tool_use" if t.kind == "anthropic" else "end_turn"
    assert message.stop_reason == stop
    # Each fake names its own tool call ("f" for the chat fake).
    name = "lookup" if t.kind == "anthropic" else "f"
    assert message.content[0].name == name  # type: ignore[union-attr]
    events = await raw_events(app, key["token"], {**ask, "stream": True})
    starts = [data for name, data in events if name == "content_block_start"]
    assert len(starts) == 1 and '"type":"tool_use"' in starts[0]
    if t.kind == "anthropic":  # (the chat fake's stream names no function)
        assert '"name":"lookup"' in starts[0]
    deltas = [data for name, data in events if name == "content_block_delta"]
    assert deltas and all('"type":"input_json_delta"' in data for data in deltas)
    assert f'"stop_reason":"{stop}"' in events[-2][1]
    if t.kind == "anthropic":  # its pieces make valid JSON, which the SDK's stream parses
        async with sdk.messages.stream(**ask) as stream:
            final = await stream.get_final_message()
        assert final.content[0].input == {"q": "".join(words(4))}  # type: ignore[union-attr]
    sent = t.requests[-1]
    if t.kind == "openai":
        assert sent["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object"},
                    "description": "Find",
                },
            }
        ]
        assert sent["tool_choice"] == "required"
    else:
        assert sent["tools"] == tools and sent["tool_choice"] == {"type": "any"}


async def test_auth_and_errors(target: tuple[Any, Target], db: str) -> None:
    import anthropic  # here: see ANTHROPIC_SDK_GROUP

    app, t = target
    t.script(output_tokens=2)
    key = await ready_key(app, provider="p", model=t.model)
    # Authorization: Bearer (the SDK's auth_token) works as well as x-api-key.
    bearer = anthropic.AsyncAnthropic(
        base_url=app.url, auth_token=key["token"], max_retries=0, http_client=http_client()
    )
    message = await bearer.messages.create(model=t.model, max_tokens=5, messages=PROMPT)
    assert message.stop_reason == "end_turn"
    with pytest.raises(anthropic.AuthenticationError) as denied:
        await client(app, "aigw-unknown").messages.create(
            model=t.model, max_tokens=5, messages=PROMPT
        )
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    sdk = client(app, key["token"])
    with pytest.raises(anthropic.BadRequestError) as wrong_model:
        await sdk.messages.create(model="other", max_tokens=5, messages=PROMPT)
    assert wrong_model.value.body["error"]["code"] == "model_not_allowed"  # type: ignore[index]
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        headers = {"x-api-key": key["token"]}
        missing = await http.post(
            "/v1/messages", json={"model": t.model, "messages": PROMPT}, headers=headers
        )
        assert missing.status_code == 400
        assert missing.json()["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in missing.json()["error"]["message"]
        # Readable (orjson reads 1024 levels) but not writable (it writes 255).
        deep = b'{"a":' * 400 + b"{}" + b"}" * 400
        nested = (
            b'{"max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": '
            b'"tool_use", "id": "t", "name": "f", "input": ' + deep + b"}]}, "
            b'{"role": "user", "content": "hi"}]}'
        )
        for bad in (
            b"{",
            b"[]",
            b'{"max_tokens": 5, "messages": [{"role": "system"}]}',
            b'{"max_tokens": 5.5, "messages": [{"role": "user", "content": "x"}]}',
            b'{"max_tokens": 5, "messages": [{"role": "user", "content": [1]}]}',
            b'{"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [1]}',
            nested,
        ):
            answer = await http.post("/v1/messages", content=bad, headers=headers)
            assert answer.status_code == 400, bad
            assert answer.json()["type"] == "error"
    # An upstream 4xx passes through in Anthropic's shape.
    t.fake.script.status = 429
    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk.messages.create(model=t.model, max_tokens=5, messages=PROMPT)
    assert limited.value.body["type"] == "error"  # type: ignore[index]
    await client(app, key["token"]).close()

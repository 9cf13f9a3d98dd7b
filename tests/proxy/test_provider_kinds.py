"""``kind: gemini`` and ``kind: azure_openai`` end to end: the official openai SDK
through a real uvicorn server, to fakes of each provider's wire format, whole
and streamed, with the policy table and the exact cut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.fakes.azure import FakeAzure
from tests.fakes.gemini import FakeGemini, prompt_count
from tests.fakes.wire import serve_in_loop, words
from tests.proxy.conftest import ANTHROPIC_SDK_GROUP, ready_key, sdk, usage_rows

pytestmark = pytest.mark.xdist_group(ANTHROPIC_SDK_GROUP)

GEMINI = "gemini-2.5-flash"
AZURE_MODEL = "gpt-4o-mini"
L = 5
MESSAGES: Any = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fox."},
]


async def add_provider(app: Any, **body: Any) -> dict[str, Any]:
    response = await app.admin.post("/providers", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
async def gemini(gateway: Any) -> AsyncIterator[tuple[Any, FakeGemini]]:
    fake = FakeGemini()
    async with serve_in_loop(fake.app()) as url:
        app = await gateway()
        await add_provider(
            app, name="gem", kind="gemini", base_url=url + "/v1beta", models=[{"name": GEMINI}]
        )
        yield app, fake


@pytest.fixture
async def azure(gateway: Any) -> AsyncIterator[tuple[Any, FakeAzure]]:
    fake = FakeAzure({"prod-4o-mini": AZURE_MODEL})
    async with serve_in_loop(fake.app()) as url:
        app = await gateway()
        await add_provider(
            app,
            name="az",
            kind="azure_openai",
            base_url=url,
            api_version="2024-10-21",
            models=[{"name": AZURE_MODEL, "deployment": "prod-4o-mini"}],
        )
        yield app, fake


async def collect(stream: Any) -> tuple[str, list[Any], Any]:
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    return text, reasons, chunks[-1].usage


# -- gemini ------------------------------------------------------------------------


async def test_gemini_whole_and_stream(gemini: tuple[Any, FakeGemini], db: str) -> None:
    app, fake = gemini
    fake.script.output_tokens = 8
    key = await ready_key(app, provider="gem", model=GEMINI)
    client = sdk(app, key["token"])
    completion = await client.chat.completions.create(model=GEMINI, messages=MESSAGES)
    assert completion.choices[0].message.content == "".join(words(8))
    assert completion.choices[0].finish_reason == "stop"
    sent = fake.recorded.last
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "Name a fox."}]}]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt_count(sent)  # the fake's own figure
    assert completion.usage.completion_tokens == 8
    # The key goes in the header, never in the URL.
    assert fake.recorded.headers[-1]["x-goog-api-key"] == key_code(key)
    assert fake.recorded.paths[-1] == f"/v1beta/models/{GEMINI}:generateContent"

    text, reasons, usage = await collect(
        await client.chat.completions.create(
            model=GEMINI, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert text == "".join(words(8)) and reasons == ["stop"]
    assert usage is not None and usage.completion_tokens == 8
    assert fake.recorded.paths[-1] == f"/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse"
    assert all("key=" not in path for path in fake.recorded.paths)
    rows = await usage_rows(db, expected=2)
    assert [(r["outcome"], r["upstream_output_tokens"]) for r in rows] == [
        ("completed", 8),
        ("completed", 8),
    ]


KEY_CODES: dict[str, str] = {}


def key_code(key: dict[str, Any]) -> str:
    return KEY_CODES[key["id"]]


@pytest.fixture(autouse=True)
def _remember_key_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    """ready_key makes its own key codes; remember them to compare headers with."""
    import tests.proxy.conftest as conftest

    original = conftest.create_key

    async def create_key(client: Any, **overrides: Any) -> dict[str, Any]:
        overrides.setdefault("key_code", "sk-upstream-" + str(len(KEY_CODES)) + "-fixed")
        key = await original(client, **overrides)
        KEY_CODES[key["id"]] = overrides["key_code"]
        return key

    monkeypatch.setattr(conftest, "create_key", create_key)


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_policy_and_exact_cut(
    gemini: tuple[Any, FakeGemini], db: str, stream: bool
) -> None:
    app, fake = gemini
    fake.script.output_tokens = 3 * L
    key = await ready_key(app, provider="gem", model=GEMINI, output_limit=L)
    client = sdk(app, key["token"])

    async def ask(**extra: Any) -> tuple[str, str | None]:
        if stream:
            text, reasons, _ = await collect(
                await client.chat.completions.create(
                    model=GEMINI, messages=MESSAGES, stream=True, **extra
                )
            )
            return text, reasons[-1] if reasons else None
        completion = await client.chat.completions.create(model=GEMINI, messages=MESSAGES, **extra)
        return completion.choices[0].message.content or "", completion.choices[0].finish_reason

    # No max given: the gateway asks Gemini for at most L (maxOutputTokens).
    assert await ask() == ("".join(words(L)), "length")
    assert fake.recorded.last["generationConfig"] == {"maxOutputTokens": L}
    # L+1 is refused before anything goes upstream.
    sent = len(fake.recorded.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        await ask(max_tokens=L + 1)
    assert refused.value.code == "output_token_limit_exceeded"
    assert len(fake.recorded.requests) == sent
    # An upstream that runs past its bound is cut by the gateway at exactly L.
    fake.script.honour_max_tokens = False
    assert await ask(max_tokens=L) == ("".join(words(L)), "length")
    rows = await usage_rows(db, expected=3)
    assert [(r["outcome"], r["output_tokens"]) for r in rows] == [
        ("truncated", L),
        ("rejected", 0),
        ("truncated", L),
    ]

    anyway = await ready_key(
        app, provider="gem", model=GEMINI, output_limit=L, usage_limit="use_anyway"
    )
    raw = await sdk(app, anyway["token"]).chat.completions.with_raw_response.create(
        model=GEMINI, messages=MESSAGES, max_tokens=L + 1
    )
    assert raw.headers["x-aigw-limit-exceeded"] == "output"
    assert raw.parse().choices[0].message.content == "".join(words(3 * L))  # in full


async def test_gemini_tools_and_errors(gemini: tuple[Any, FakeGemini]) -> None:
    app, fake = gemini
    fake.script.output_tokens = 3
    fake.script.tool_call = True
    key = await ready_key(app, provider="gem", model=GEMINI)
    client = sdk(app, key["token"])
    tools: Any = [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    ]
    completion = await client.chat.completions.create(
        model=GEMINI, messages=MESSAGES, tools=tools, tool_choice="required"
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert call.function.arguments == '{"q":"' + "".join(words(3)) + '"}'  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"
    sent = fake.recorded.last
    assert sent["tools"] == [
        {"functionDeclarations": [{"name": "lookup", "parameters": {"type": "object"}}]}
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    # A tool round trip: the answer goes back as a functionResponse named after the call.
    follow: Any = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"fox": "red"}'},
    ]
    fake.script.tool_call = False
    await client.chat.completions.create(model=GEMINI, messages=follow, tools=tools)
    contents = fake.recorded.last["contents"]
    assert contents[1]["role"] == "model" and "functionCall" in contents[1]["parts"][0]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"fox": "red"}}}
    ]
    fake.script.status = 429
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=GEMINI, messages=MESSAGES)
    assert limited.value.code == "RESOURCE_EXHAUSTED"


async def test_gemini_through_the_messages_api(gemini: tuple[Any, FakeGemini]) -> None:
    import anthropic  # here: see ANTHROPIC_SDK_GROUP

    app, fake = gemini
    fake.script.output_tokens = 3 * L
    fake.script.honour_max_tokens = False
    key = await ready_key(app, provider="gem", model=GEMINI, output_limit=L)
    client = anthropic.AsyncAnthropic(base_url=app.url, api_key=key["token"], max_retries=0)
    async with client.messages.stream(
        model=GEMINI, max_tokens=L, messages=[{"role": "user", "content": "Name a fox."}]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "".join(words(L))  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens"


# -- azure_openai ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_deployment_and_exact_cut(
    azure: tuple[Any, FakeAzure], db: str, stream: bool
) -> None:
    app, fake = azure
    fake.script.output_tokens = 8
    key = await ready_key(app, provider="az", model=AZURE_MODEL)
    client = sdk(app, key["token"])
    if stream:
        text, reasons, usage = await collect(
            await client.chat.completions.create(
                model=AZURE_MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert (text, reasons) == ("".join(words(8)), ["stop"])
        assert usage is not None and usage.completion_tokens == 8
    else:
        completion = await client.chat.completions.create(model=AZURE_MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == "".join(words(8))
    assert fake.recorded.paths[-1] == (
        "/openai/deployments/prod-4o-mini/chat/completions?api-version=2024-10-21"
    )
    headers = fake.recorded.headers[-1]
    assert headers["api-key"] == key_code(key)
    assert "Authorization" not in headers

    fake.script.output_tokens = 3 * L
    fake.script.honour_max_tokens = False
    cut = await ready_key(app, provider="az", model=AZURE_MODEL, output_limit=L)
    client = sdk(app, cut["token"])
    if stream:
        text, reasons, _ = await collect(
            await client.chat.completions.create(model=AZURE_MODEL, messages=MESSAGES, stream=True)
        )
        assert (text, reasons[-1]) == ("".join(words(L)), "length")
    else:
        completion = await client.chat.completions.create(model=AZURE_MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == "".join(words(L))
        assert completion.choices[0].finish_reason == "length"
    assert fake.recorded.last["max_tokens"] == L
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=AZURE_MODEL, messages=MESSAGES, max_tokens=L + 1)
    rows = await usage_rows(db, expected=3)
    assert [r["outcome"] for r in rows] == ["completed", "truncated", "rejected"]


async def test_azure_unknown_deployment_passes_through(
    azure: tuple[Any, FakeAzure], gateway: Any
) -> None:
    app, fake = azure
    fake.deployments.clear()
    key = await ready_key(app, provider="az", model=AZURE_MODEL)
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk(app, key["token"]).chat.completions.create(model=AZURE_MODEL, messages=MESSAGES)
    assert missing.value.code == "DeploymentNotFound"

"""``input_counting: "upstream"``: the provider's own counter judges input limits
(Gemini countTokens, Anthropic count_tokens), with a cache, a short timeout and
the tiktoken estimate + margin as the fallback; the usage record says which."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.billing import load_encoding
from tests.fakes.gemini import FakeGemini
from tests.fakes.wire import serve_in_loop
from tests.proxy.conftest import ANTHROPIC_SDK_GROUP, ready_key, sdk, usage_rows

pytestmark = pytest.mark.xdist_group(ANTHROPIC_SDK_GROUP)

GEMINI = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5"
MESSAGES: Any = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fox."},
]
# The fakes' counters, by hand: words ("Be brief." 2, "Name a fox." 3) + 3 a message
# (Gemini: one content; Anthropic: one message — system is not a message).
UPSTREAM_COUNT = 2 + 3 + 3


def tiktoken_estimate() -> int:
    """OpenAI's cookbook formula by hand: 3 a message + role and text tokens, 3 priming."""
    encoding = load_encoding("o200k_base")
    system = 3 + len(encoding.encode("system")) + len(encoding.encode("Be brief."))
    user = 3 + len(encoding.encode("user")) + len(encoding.encode("Name a fox."))
    return system + user + 3


@pytest.fixture
async def gemini(gateway: Any) -> AsyncIterator[tuple[Any, FakeGemini]]:
    fake = FakeGemini()
    async with serve_in_loop(fake.app()) as url:
        app = await gateway(upstream_count_timeout=0.3)
        response = await app.admin.post(
            "/providers",
            json={
                "name": "gem",
                "kind": "gemini",
                "base_url": url + "/v1beta",
                "input_counting": "upstream",
                "counting_margin": 25,
                "models": [{"name": GEMINI}],
            },
        )
        assert response.status_code == 201, response.text
        yield app, fake


async def test_the_providers_count_decides(gemini: tuple[Any, FakeGemini], db: str) -> None:
    app, fake = gemini
    fake.script.output_tokens = 2
    n = UPSTREAM_COUNT
    assert n != tiktoken_estimate()  # else this test could not tell the counters apart
    refused = await ready_key(app, provider="gem", model=GEMINI, input_limit=n - 1)
    with pytest.raises(openai.BadRequestError) as over:
        await sdk(app, refused["token"]).chat.completions.create(model=GEMINI, messages=MESSAGES)
    assert over.value.code == "input_token_limit_exceeded"
    assert f"The input is {n} tokens" in over.value.message
    assert len(fake.recorded.requests) == 0  # nothing generated
    counted = fake.count_requests
    assert counted.paths[-1] == f"/v1beta/models/{GEMINI}:countTokens"
    assert counted.headers[-1]["x-goog-api-key"].startswith("sk-upstream-")
    assert counted.last["generateContentRequest"]["systemInstruction"] == {
        "parts": [{"text": "Be brief."}]
    }

    allowed = await ready_key(app, provider="gem", model=GEMINI, input_limit=n)
    client = sdk(app, allowed["token"])
    raw = await client.chat.completions.with_raw_response.create(model=GEMINI, messages=MESSAGES)
    assert raw.headers["x-aigw-input-tokens"] == str(n)
    # The same request again: the counter's answer is remembered.
    asked = len(counted.requests)
    await client.chat.completions.create(model=GEMINI, messages=MESSAGES)
    assert len(counted.requests) == asked
    # No input limit, nothing to judge: the counter is not asked.
    unlimited = await ready_key(app, provider="gem", model=GEMINI)
    await sdk(app, unlimited["token"]).chat.completions.create(
        model=GEMINI, messages=[{"role": "user", "content": "Another question"}]
    )
    assert len(counted.requests) == asked
    rows = await usage_rows(db, expected=4)
    assert [(r["input_counter"], r["input_tokens"]) for r in rows] == [
        ("upstream", n),
        ("upstream", n),
        ("upstream", n),
        ("tiktoken", rows[3]["input_tokens"]),
    ]


@pytest.mark.parametrize("failure", ["slow", "down"])
async def test_fallback_is_the_estimate_plus_margin(
    gemini: tuple[Any, FakeGemini], db: str, failure: str
) -> None:
    app, fake = gemini
    fake.script.output_tokens = 2
    if failure == "slow":
        fake.script.count_delay = 2.0  # beyond upstream_count_timeout (0.3 s)
    else:
        fake.script.count_status = 503
    estimate = tiktoken_estimate()
    fallback = estimate + -(-estimate * 25 // 100)  # + 25 %, rounded up
    refused = await ready_key(app, provider="gem", model=GEMINI, input_limit=fallback - 1)
    with pytest.raises(openai.BadRequestError) as over:
        await sdk(app, refused["token"]).chat.completions.create(model=GEMINI, messages=MESSAGES)
    assert f"The input is {fallback} tokens" in over.value.message
    allowed = await ready_key(app, provider="gem", model=GEMINI, input_limit=fallback)
    await sdk(app, allowed["token"]).chat.completions.create(model=GEMINI, messages=MESSAGES)
    rows = await usage_rows(db, expected=2)
    assert [(r["outcome"], r["input_counter"], r["input_tokens"]) for r in rows] == [
        ("rejected", "fallback", fallback),
        ("completed", "fallback", fallback),
    ]


async def test_anthropic_counter_through_both_doors(gateway: Any, db: str) -> None:
    import anthropic  # here: see ANTHROPIC_SDK_GROUP

    fake = FakeAnthropic()
    fake.script.output_tokens = 2
    async with serve_in_loop(fake.app()) as url:
        app = await gateway()
        response = await app.admin.post(
            "/providers",
            json={
                "name": "claude",
                "kind": "anthropic",
                "base_url": url + "/v1",
                "input_counting": "upstream",
                "models": [{"name": CLAUDE}],
            },
        )
        assert response.status_code == 201, response.text
        n = UPSTREAM_COUNT
        key = await ready_key(app, provider="claude", model=CLAUDE, input_limit=n)
        await sdk(app, key["token"]).chat.completions.create(model=CLAUDE, messages=MESSAGES)
        client = anthropic.AsyncAnthropic(base_url=app.url, api_key=key["token"], max_retries=0)
        prompt: Any = [{"role": "user", "content": "Name a fox."}]
        counted = await client.messages.count_tokens(
            model=CLAUDE, system="Be brief.", messages=prompt
        )
        assert counted.input_tokens == n
        await client.messages.create(
            model=CLAUDE, max_tokens=5, system="Be brief.", messages=prompt
        )
        tight = await ready_key(app, provider="claude", model=CLAUDE, input_limit=n - 1)
        with pytest.raises(anthropic.BadRequestError):
            await anthropic.AsyncAnthropic(
                base_url=app.url, api_key=tight["token"], max_retries=0
            ).messages.create(model=CLAUDE, max_tokens=5, system="Be brief.", messages=prompt)
        assert fake.count_requests.paths[0] == "/v1/messages/count_tokens"
        assert fake.count_requests.last == {
            "model": CLAUDE,
            "messages": prompt,
            "system": "Be brief.",
        }
        rows = await usage_rows(db, expected=3)
        assert [(r["outcome"], r["input_counter"], r["input_tokens"]) for r in rows] == [
            ("completed", "upstream", n),
            ("completed", "upstream", n),
            ("rejected", "upstream", n),
        ]

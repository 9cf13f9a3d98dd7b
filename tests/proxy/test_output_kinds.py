"""Every kind of output is counted and cut, per choice, through a real server
(issue 11, items 3 and 4): reasoning deltas, refusals, tool calls, n = 2.

The fake upstream (``tests.fakes.upstream``) generates the answers; expected
figures are hand counts with tiktoken's own encoding (``tests.fakes.billing``),
and the fake's words are one token each, so "the first L words" is L tokens.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SharedFakeUpstream
from tests.fakes import FakeUpstream
from tests.fakes.billing import load_encoding
from tests.fakes.upstream import words
from tests.proxy.conftest import MODEL, create_provider, ready_key, sdk, usage_rows

ENCODING = load_encoding("o200k_base")  # gpt-4o-mini's
MESSAGES = [{"role": "user", "content": "go"}]
L = 10
# Per tool call, besides its arguments: the name and 4 tokens of framing (OpenAI's
# API reference: get_current_weather, 3 tokens, with 10 tokens of arguments
# answers completion_tokens = 17).
FRAMING = 4


def tokens(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


def first_words(n: int) -> str:
    return "".join(words(n))


@pytest.fixture(scope="module")
def fake(shared_fake_upstream: SharedFakeUpstream) -> FakeUpstream:
    return shared_fake_upstream.fresh()


@pytest.fixture
async def app(gateway: Any, fake: FakeUpstream) -> Any:
    fake.reset()
    app = await gateway()
    await create_provider(app.admin, fake.url)
    return app


async def collect(stream: Any) -> dict[int, dict[str, Any]]:
    """Per choice: the text of each field, tool calls, finish_reason, and usage."""
    choices: dict[int, dict[str, Any]] = {}
    async for chunk in stream:
        if chunk.usage is not None:
            choices.setdefault(-1, {})["usage"] = chunk.usage
        for choice in chunk.choices:
            state = choices.setdefault(
                choice.index, {"text": {}, "calls": {}, "finish": [], "after_finish": 0}
            )
            if state["finish"]:
                state["after_finish"] += 1
            delta = choice.delta
            for field in ("content", "refusal", "reasoning_content", "reasoning"):
                value = getattr(delta, field, None)
                if value:
                    state["text"][field] = state["text"].get(field, "") + value
            for call in delta.tool_calls or []:
                entry = state["calls"].setdefault(call.index, {"name": "", "arguments": ""})
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                state["finish"].append(choice.finish_reason)
    return choices


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_are_counted_and_cut(
    app: Any, fake: FakeUpstream, db: str, field: str
) -> None:
    # The case: 300 reasoning events went past an output limit of 10.
    fake.set_scenario(reasoning_tokens=300, reasoning_field=field, ignore_max_tokens=True)
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    (choice,) = [c for i, c in (await collect(stream)).items() if i >= 0]
    assert choice["text"] == {field: first_words(L)}
    assert choice["finish"] == ["length"]
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    message = completion.choices[0].message
    assert getattr(message, field) == first_words(L) and not message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == L
    rows = await usage_rows(db, expected=2)
    # The stream ended at the cut, before the upstream's usage; the whole answer
    # reports what the upstream generated (300 reasoning, then 16 content).
    assert [(r["output_tokens"], r["upstream_output_tokens"], r["outcome"]) for r in rows] == [
        (L, None, "truncated"),
        (L, 316, "truncated"),
    ]


async def test_reasoning_then_content_share_the_limit(
    app: Any, fake: FakeUpstream, db: str
) -> None:
    fake.set_scenario(reasoning_tokens=4, tokens=30, ignore_max_tokens=True)
    key = await ready_key(app, output_limit=L)
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    (choice,) = (await collect(stream)).values()
    assert choice["text"] == {"reasoning_content": first_words(4), "content": first_words(L - 4)}
    (row,) = await usage_rows(db)
    assert row["output_tokens"] == L


async def test_reasoning_under_the_limit_is_recorded_in_full(
    app: Any, fake: FakeUpstream, db: str
) -> None:
    fake.set_scenario(reasoning_tokens=5, tokens=3)
    key = await ready_key(app, output_limit=100)
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    (choice,) = (await collect(stream)).values()
    assert choice["finish"] == ["stop"]
    (row,) = await usage_rows(db)
    # Both sides count reasoning: the gateway by tiktoken, the fake as generated.
    assert row["output_tokens"] == row["upstream_output_tokens"] == 8


@pytest.mark.parametrize("stream", [False, True])
async def test_refusal_is_counted_and_cut_like_content(
    app: Any, fake: FakeUpstream, db: str, stream: bool
) -> None:
    refusal = "I'm sorry, but I can't help with that request, not today and not tomorrow."
    assert tokens(refusal) > L
    fake.set_scenario(refusal=refusal, ignore_max_tokens=True)
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    if stream:
        chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        (choice,) = (await collect(chunks)).values()
        relayed, finish = choice["text"]["refusal"], choice["finish"]
    else:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        relayed = completion.choices[0].message.refusal
        finish = [completion.choices[0].finish_reason]
    assert relayed == ENCODING.decode(ENCODING.encode_ordinary(refusal)[:L])
    assert finish == ["length"]
    (row,) = await usage_rows(db)
    assert row["output_tokens"] == L


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_answers_count_name_framing_and_arguments(
    app: Any, fake: FakeUpstream, db: str, stream: bool
) -> None:
    name, arguments = "get_weather", '{"location": "Paris, France", "unit": "celsius"}'
    fake.set_scenario(tool_calls=[{"name": name, "arguments": arguments}])
    key = await ready_key(app, output_limit=100)
    client = sdk(app, key["token"])
    if stream:
        chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        (choice,) = (await collect(chunks)).values()
        assert choice["calls"] == {0: {"name": name, "arguments": arguments}}
    else:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        (call,) = completion.choices[0].message.tool_calls or []
        assert call.function.arguments == arguments  # type: ignore[union-attr]
    (row,) = await usage_rows(db)
    assert row["output_tokens"] == tokens(name) + FRAMING + tokens(arguments)


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_arguments_are_cut_after_name_and_framing(
    app: Any, fake: FakeUpstream, db: str, stream: bool
) -> None:
    name = "get_weather"
    arguments = '{"cities": ["Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna"]}'
    fake.set_scenario(tool_calls=[{"name": name, "arguments": arguments}], ignore_max_tokens=True)
    limit = 12
    key = await ready_key(app, output_limit=limit)
    client = sdk(app, key["token"])
    budget = limit - tokens(name) - FRAMING
    if stream:
        chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        (choice,) = (await collect(chunks)).values()
        ((_, call),) = choice["calls"].items()
        relayed, finish = call["arguments"], choice["finish"]
    else:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        (tool_call,) = completion.choices[0].message.tool_calls or []
        relayed = tool_call.function.arguments  # type: ignore[union-attr]
        finish = [completion.choices[0].finish_reason]
    assert arguments.startswith(relayed) and tokens(relayed) <= budget
    # The longest prefix within the budget (brute force).
    longest = max(k for k in range(len(arguments) + 1) if tokens(arguments[:k]) <= budget)
    assert relayed == arguments[:longest]
    assert finish == ["length"]
    (row,) = await usage_rows(db)
    assert row["output_tokens"] == tokens(name) + FRAMING + tokens(relayed) <= limit


@pytest.mark.parametrize("sequential", [True, False])
async def test_two_choices_are_each_delivered_and_cut_on_their_own(
    app: Any, fake: FakeUpstream, db: str, sequential: bool
) -> None:
    # Choice 0 passes the limit before choice 1 starts (sequential) or while it
    # streams (interleaved); choice 1 must still be delivered and cut.
    fake.set_scenario(
        honour_n=True, sequential_choices=sequential, tokens=25, ignore_max_tokens=True
    )
    key = await ready_key(app, output_limit=L)
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, n=2, stream=True, stream_options={"include_usage": True}
    )
    choices = await collect(stream)
    usage = choices.pop(-1)["usage"]
    assert sorted(choices) == [0, 1]
    for choice in choices.values():
        assert choice["text"] == {"content": first_words(L)}
        assert choice["finish"] == ["length"] and choice["after_finish"] == 0
    assert usage.completion_tokens == 2 * L
    (row,) = await usage_rows(db)
    # Both choices cut: the gateway ended the stream before the upstream's usage.
    assert (row["output_tokens"], row["upstream_output_tokens"]) == (2 * L, None)


async def test_two_choices_one_cut_one_finished(app: Any, fake: FakeUpstream) -> None:
    # Without a cut both choices end as the upstream says; n = 2, whole answer.
    fake.set_scenario(honour_n=True, tokens=6)
    key = await ready_key(app, output_limit=L)
    completion = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, n=2
    )
    assert [c.message.content for c in completion.choices] == [first_words(6)] * 2
    assert [c.finish_reason for c in completion.choices] == ["stop", "stop"]
    fake.set_scenario(honour_n=True, tokens=25, ignore_max_tokens=True)
    completion = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, n=2
    )
    assert [c.message.content for c in completion.choices] == [first_words(L)] * 2
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]
    assert completion.usage is not None and completion.usage.completion_tokens == 2 * L

"""``POST /v1/responses`` through a real server (the app under uvicorn), the official
``openai`` SDK as the client and a fake upstream that speaks the Responses API
(:mod:`tests.fakes.responses`, built from the SDK's own types).

Expected figures are hand counts: the fake writes one-token words, and input
counts follow OpenAI's cookbook formula (3 per message + the tokens of role and
content + 3 priming the reply), evaluated with tiktoken directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import tiktoken

from tests.fakes.billing import load_encoding
from tests.fakes.responses import FakeResponses, start_fake_responses, words
from tests.proxy.conftest import MODEL, client_tls, create_provider, ready_key, sdk, usage_rows

L = 20


@pytest.fixture
async def fake() -> AsyncIterator[FakeResponses]:
    state, runner = await start_fake_responses()
    yield state
    await runner.cleanup()


@pytest.fixture
async def app(gateway: Any, fake: FakeResponses) -> Any:
    app = await gateway()
    await create_provider(app.admin, fake.url)
    return app


@pytest.fixture(scope="module")
def o200k() -> tiktoken.Encoding:
    return load_encoding("o200k_base")  # gpt-4o-mini's encoding, built by tiktoken


def tokens(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode_ordinary(text))


def user_input_of(encoding: tiktoken.Encoding, total: int) -> str:
    """A user text whose request (``input`` as a string) counts *total* tokens by the
    cookbook formula: 3 (message) + tokens("user") + content + 3 (priming)."""
    overhead = 3 + tokens(encoding, "user") + 3
    text = "".join(words(total - overhead))
    assert overhead + tokens(encoding, text) == total
    return text


# -- the SDK's calls work ---------------------------------------------------------------


async def test_create_whole_stream_and_stream_helper(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding, db: str
) -> None:
    key = await ready_key(app)
    client = sdk(app, key["token"])
    fake.script.output_tokens = 5

    raw = await client.responses.with_raw_response.create(model=MODEL, input="Say hi")
    response = raw.parse()
    assert response.status == "completed"
    assert response.output_text == " the quick brown fox jumps"
    assert response.usage is not None and response.usage.output_tokens == 5
    assert raw.headers["x-aigw-input-tokens"] == str(
        3 + tokens(o200k, "user") + tokens(o200k, "Say hi") + 3
    )

    stream = await client.responses.create(model=MODEL, input="Say hi", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == " the quick brown fox jumps"

    async with client.responses.stream(model=MODEL, input="Say hi") as helper:
        async for _ in helper:
            pass
        final = await helper.get_final_response()
    assert final.output_text == " the quick brown fox jumps"

    assert fake.last["model"] == MODEL and fake.last["input"] == "Say hi"
    rows = await usage_rows(db, expected=3)
    assert [r["endpoint"] for r in rows] == ["responses"] * 3
    assert [r["outcome"] for r in rows] == ["completed"] * 3
    assert [r["output_tokens"] for r in rows] == [5, 5, 5]
    assert [r["upstream_input_tokens"] for r in rows] == [42, 42, 42]
    assert [r["stream"] for r in rows] == [False, True, True]


async def test_model_is_filled_in_and_other_models_refused(app: Any, fake: FakeResponses) -> None:
    key = await ready_key(app)
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        auth = {"Authorization": f"Bearer {key['token']}"}
        answer = await http.post("/v1/responses", json={"input": "hi"}, headers=auth)
        assert answer.status_code == 200 and fake.last["model"] == MODEL
        answer = await http.post(
            "/v1/responses", json={"model": "gpt-4o", "input": "hi"}, headers=auth
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "model_not_allowed"
        for bad, param in (
            ({"input": 5}, "input"),
            ({"input": [1]}, "input.0"),
            ({"input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
            ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
            ({"input": "x", "stream": "yes"}, "stream"),
        ):
            answer = await http.post("/v1/responses", json=bad, headers=auth)
            assert answer.status_code == 400, bad
            assert answer.json()["error"]["param"] == param
        answer = await http.post("/v1/responses", content=b"[1]", headers=auth)
        assert answer.status_code == 400
        answer = await http.post("/v1/responses", content=b"{", headers=auth)
        assert answer.json()["error"]["code"] == "invalid_json"
        answer = await http.post("/v1/responses", json={"input": "x"})
        assert answer.status_code == 401


# -- SPEC §3's policy table, for Responses, at L-1, L and L+1 ------------------------


async def test_reject_input_limit(app: Any, fake: FakeResponses, o200k: tiktoken.Encoding) -> None:
    key = await ready_key(app, input_limit=L)
    client = sdk(app, key["token"])
    for total in (L - 1, L):
        response = await client.responses.create(model=MODEL, input=user_input_of(o200k, total))
        assert response.status == "completed"
    sent = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input=user_input_of(o200k, L + 1))
    assert refused.value.code == "input_token_limit_exceeded"
    assert len(fake.requests) == sent  # nothing went upstream


async def test_use_anyway_input_limit(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding, db: str
) -> None:
    key = await ready_key(app, input_limit=L, usage_limit="use_anyway")
    client = sdk(app, key["token"])
    for total, flagged in ((L - 1, None), (L, None), (L + 1, "input")):
        raw = await client.responses.with_raw_response.create(
            model=MODEL, input=user_input_of(o200k, total)
        )
        assert raw.headers.get("x-aigw-limit-exceeded") == flagged
        assert raw.headers["x-aigw-input-tokens"] == str(total)
    rows = await usage_rows(db, expected=3)
    assert [r["input_limit_exceeded"] for r in rows] == [False, False, True]
    assert [r["input_tokens"] for r in rows] == [L - 1, L, L + 1]


async def test_reject_requested_output_over_limit(app: Any, fake: FakeResponses) -> None:
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    for requested in (L - 1, L):
        await client.responses.create(model=MODEL, input="hi", max_output_tokens=requested)
        assert fake.last["max_output_tokens"] == requested  # the client's bound stands
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input="hi", max_output_tokens=L + 1)
    assert refused.value.code == "output_token_limit_exceeded"
    assert refused.value.param == "max_output_tokens"


async def test_use_anyway_requested_output_over_limit(app: Any, fake: FakeResponses) -> None:
    key = await ready_key(app, output_limit=L, usage_limit="use_anyway")
    client = sdk(app, key["token"])
    for requested, flagged in ((L - 1, None), (L, None), (L + 1, "output")):
        raw = await client.responses.with_raw_response.create(
            model=MODEL, input="hi", max_output_tokens=requested
        )
        assert raw.headers.get("x-aigw-limit-exceeded") == flagged
        assert fake.last["max_output_tokens"] == requested  # forwarded unchanged


async def test_reject_without_max_asks_upstream_for_the_limit(
    app: Any, fake: FakeResponses, db: str
) -> None:
    key = await ready_key(app, output_limit=L)
    fake.script.output_tokens = L + 5  # the fake honours max_output_tokens
    response = await sdk(app, key["token"]).responses.create(model=MODEL, input="hi")
    assert fake.last["max_output_tokens"] == L
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    (row,) = await usage_rows(db)
    assert row["outcome"] == "truncated" and row["output_tokens"] == L


@pytest.mark.parametrize("generated", [L - 1, L, L + 1, 3 * L])
async def test_reject_cuts_generated_output_at_exactly_the_limit(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding, db: str, generated: int
) -> None:
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    fake.script.output_tokens = generated
    fake.script.honour_max = False  # only the gateway's cut applies
    cut = generated > L
    expected = "".join(words(min(generated, L)))

    whole = await client.responses.create(model=MODEL, input="hi")
    assert whole.output_text == expected and tokens(o200k, whole.output_text) == min(generated, L)
    assert whole.status == ("incomplete" if cut else "completed")
    if cut:
        assert whole.incomplete_details is not None
        assert whole.incomplete_details.reason == "max_output_tokens"
        assert whole.output[0].status == "incomplete"  # type: ignore[union-attr]
        assert whole.usage is not None and whole.usage.output_tokens == L

    stream = await client.responses.create(model=MODEL, input="hi", stream=True)
    events = [event async for event in stream]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected
    last = events[-1]
    assert last.type == ("response.incomplete" if cut else "response.completed")
    assert last.response.output_text == expected
    if cut:
        assert last.response.incomplete_details is not None
        assert last.response.incomplete_details.reason == "max_output_tokens"
        kinds = [e.type for e in events]
        assert kinds[-5:] == [
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete",
        ]
        numbers = [e.sequence_number for e in events]
        assert numbers == sorted(set(numbers))  # strictly increasing

    # The SDK's stream helper accepts the gateway's ending event by event.
    async with client.responses.stream(model=MODEL, input="hi") as helper:
        seen = [event async for event in helper]
        if not cut:
            final = await helper.get_final_response()
            assert final.output_text == expected
    assert seen[-1].type == ("response.incomplete" if cut else "response.completed")
    done = [e for e in seen if e.type == "response.output_text.done"]
    assert done and done[-1].text == expected

    rows = await usage_rows(db, expected=3)
    assert [r["output_tokens"] for r in rows] == [min(generated, L)] * 3
    assert [r["outcome"] for r in rows] == ["truncated" if cut else "completed"] * 3
    assert not any(r["output_limit_exceeded"] for r in rows)


@pytest.mark.parametrize("generated", [L - 1, L, L + 1])
async def test_use_anyway_delivers_output_over_the_limit_and_flags_it(
    app: Any, fake: FakeResponses, db: str, generated: int
) -> None:
    key = await ready_key(app, output_limit=L, usage_limit="use_anyway")
    client = sdk(app, key["token"])
    fake.script.output_tokens = generated
    fake.script.honour_max = False
    over = generated > L
    raw = await client.responses.with_raw_response.create(model=MODEL, input="hi")
    assert raw.parse().output_text == "".join(words(generated))
    assert raw.headers.get("x-aigw-limit-exceeded") == ("output" if over else None)
    assert "max_output_tokens" not in fake.last
    stream = await client.responses.create(model=MODEL, input="hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    rows = await usage_rows(db, expected=2)
    assert [r["output_limit_exceeded"] for r in rows] == [over, over]
    assert [r["output_tokens"] for r in rows] == [generated, generated]


# -- what counts as output ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["function_call", "reasoning", "refusal"])
async def test_arguments_summaries_and_refusals_count_as_output(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding, kind: str
) -> None:
    key = await ready_key(app, output_limit=L)
    client = sdk(app, key["token"])
    fake.script.kind = kind
    fake.script.output_tokens = L + 6
    fake.script.honour_max = False

    def generated(response: Any) -> str:
        texts = []
        for item in response.output:
            if item.type == "function_call":
                texts.append(item.arguments)
            elif item.type == "reasoning":
                texts.extend(part.text for part in item.summary)
            elif item.type == "message":
                for part in item.content:
                    texts.append(part.refusal if part.type == "refusal" else part.text)
        return "".join(texts)

    expected = "".join(words(L))
    whole = await client.responses.create(model=MODEL, input="hi")
    assert whole.status == "incomplete"
    assert generated(whole) == expected and tokens(o200k, generated(whole)) == L

    stream = await client.responses.create(model=MODEL, input="hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    deltas = "".join(getattr(e, "delta", "") for e in events if e.type.endswith(".delta"))
    assert deltas == expected
    assert generated(events[-1].response) == expected

    async with client.responses.stream(
        model=MODEL,
        input="hi",
        tools=[
            {
                "type": "function",
                "name": "lookup",
                "parameters": {"type": "object"},
                "strict": False,
            }
        ]
        if kind == "function_call"
        else openai.omit,
    ) as helper:
        seen = [event async for event in helper]
    assert seen[-1].type == "response.incomplete"
    assert generated(seen[-1].response) == expected


# -- input the gateway cannot count ---------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"previous_response_id": "resp_earlier"},
        {"conversation": "conv_1"},
        {"input": [{"type": "item_reference", "id": "msg_earlier"}]},
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
    ],
)
async def test_stored_context_under_reject_with_an_input_limit_is_refused(
    app: Any, fake: FakeResponses, db: str, extra: dict[str, Any]
) -> None:
    body = {"model": MODEL, "input": "hi", **extra}
    strict = await ready_key(app, input_limit=L)
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        answer = await http.post(
            "/v1/responses", json=body, headers={"Authorization": f"Bearer {strict['token']}"}
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "input_not_countable"
        assert not fake.requests

        # Without an input limit, or under use_anyway, it is forwarded and the
        # upstream's count recorded (the fake reports 42 input tokens: more than L).
        for overrides in ({"output_limit": L}, {"input_limit": L, "usage_limit": "use_anyway"}):
            key = await ready_key(app, **overrides)
            answer = await http.post(
                "/v1/responses", json=body, headers={"Authorization": f"Bearer {key['token']}"}
            )
            assert answer.status_code == 200, answer.text
    rows = await usage_rows(db, expected=3)
    assert rows[0]["error_code"] == "input_not_countable"
    assert [r["upstream_input_tokens"] for r in rows[1:]] == [42, 42]
    assert [r["input_tokens"] for r in rows[1:]] == [42, 42]
    assert rows[2]["input_limit_exceeded"] is True


async def test_anthropic_kind_is_refused_naming_the_kind(app: Any, fake: FakeResponses) -> None:
    await create_provider(app.admin, fake.url, name="claude", kind="anthropic")
    key = await ready_key(app, provider="claude")
    client = sdk(app, key["token"])
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input="hi")
    assert refused.value.code == "endpoint_not_supported"
    assert "anthropic" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model=MODEL, input="hi")
    assert not fake.requests


async def test_upstream_errors_pass_through_in_the_envelope(app: Any, fake: FakeResponses) -> None:
    key = await ready_key(app)
    fake.script.status = 429
    with pytest.raises(openai.RateLimitError) as failed:
        await sdk(app, key["token"]).responses.create(model=MODEL, input="hi")
    assert failed.value.code == "bad"


async def test_counts_instructions_tools_and_history_like_chat(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding
) -> None:
    """Instructions, a function call and its output in history: counted like the chat
    request they stand for (hand count, cookbook + hmarr's function-call rules)."""
    key = await ready_key(app)
    body = {
        "model": MODEL,
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    }
    # developer: 3 + "developer" + "Be brief."; user: 3 + "user" + text;
    # assistant tool call: 3 + "assistant" + name twice + arguments + 5 (the per-call
    # rule fitted to chrisdinn/tokens' API-measured cases, docs/proxy.md);
    # tool reply: 3 + "tool" + "sunny" + name + 1 - 2; + 3 priming.
    expected = (
        3 + tokens(o200k, "developer") + tokens(o200k, "Be brief.")
        + 3 + tokens(o200k, "user") + tokens(o200k, "Weather in Paris?")
        + 3 + tokens(o200k, "assistant") + 2 * tokens(o200k, "weather") + tokens(o200k, "{}") + 5
        + 3 + tokens(o200k, "tool") + tokens(o200k, "sunny") + tokens(o200k, "weather") + 1 - 2
        + 3
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        answer = await http.post(
            "/v1/responses", content=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key['token']}", "content-type": "application/json"},
        )  # fmt: skip
    assert answer.status_code == 200
    assert answer.headers["x-aigw-input-tokens"] == str(expected)


@pytest.mark.parametrize("failure", ["reset", "error"])
async def test_a_stream_failing_midway_ends_with_an_error_and_is_recorded(
    app: Any, fake: FakeResponses, db: str, failure: str
) -> None:
    key = await ready_key(app)
    fake.script.output_tokens = 10
    fake.script.fail_after = 4
    fake.script.failure = failure
    stream = await sdk(app, key["token"]).responses.create(model=MODEL, input="hi", stream=True)
    seen: list[Any] = []
    if failure == "reset":
        with pytest.raises(openai.APIError):
            async for event in stream:
                seen.append(event)
    else:
        seen = [event async for event in stream]
        assert seen[-1].type == "error" and seen[-1].code == "server_error"
    deltas = [e for e in seen if e.type == "response.output_text.delta"]
    assert len(deltas) == 4
    (row,) = await usage_rows(db)
    assert row["outcome"] == "upstream_error" and row["output_tokens"] == 4
    assert row["error_code"] == ("upstream_error" if failure == "reset" else "server_error")


async def test_input_too_deeply_nested_to_count_fails_closed(app: Any, fake: FakeResponses) -> None:
    """An unknown item nested 1,000 deep must not count as nothing (that would slip
    its text past the input limit): the chat counter walks it and counts its text,
    5,000 characters against a limit of L, so the request is refused before it
    goes upstream."""
    action = b"[" * 1000 + b'"' + b"x" * 5000 + b'"' + b"]" * 1000
    body = b'{"input":[{"type":"web_search_call","action":' + action + b"}]}"
    key = await ready_key(app, input_limit=L)
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        answer = await http.post(
            "/v1/responses",
            content=body,
            headers={"Authorization": f"Bearer {key['token']}", "content-type": "application/json"},
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "input_token_limit_exceeded"
    assert not fake.requests


async def test_client_leaving_mid_stream_is_recorded_and_closes_the_upstream(
    app: Any, fake: FakeResponses, db: str
) -> None:
    key = await ready_key(app)
    fake.script.output_tokens = 200
    fake.script.chunk_delay = 0.02
    stream = await sdk(app, key["token"]).responses.create(model=MODEL, input="hi", stream=True)
    deltas = 0
    async for event in stream:
        if event.type == "response.output_text.delta":
            deltas += 1
            if deltas == 5:
                break
    await stream.close()
    (row,) = await usage_rows(db)
    assert row["outcome"] == "client_disconnected" and row["status_code"] == 200
    assert 5 <= row["output_tokens"] < 200
    for _ in range(100):
        if fake.disconnects:
            break
        await asyncio.sleep(0.02)
    assert fake.disconnects == 1

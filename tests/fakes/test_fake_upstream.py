"""The fake upstreams, exercised through the official openai SDK (and raw HTTP
where the SDK would hide what is on the wire), so they can be trusted."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import tiktoken

from tests.fakes import REPO_ROOT, FakeUpstream, start_fake_upstream, start_xpyd_sim
from tests.fakes.billing import load_encoding
from tests.fakes.upstream import words
from tests.proxy.counting.published import COOKBOOK_MESSAGES, COOKBOOK_TOOLS

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with start_fake_upstream() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.url, api_key="sk-upstream-key", max_retries=0) as sdk:
        yield sdk


def sse_lines(upstream: FakeUpstream, body: dict[str, Any], **headers: str) -> list[str]:
    with httpx.stream(
        "POST", f"{upstream.url}/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def n_tokens(text: str, name: str = "o200k_base") -> int:
    return len(load_encoding(name).encode_ordinary(text))


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_generated_words_are_one_token_each(name: str) -> None:
    encoding = load_encoding(name)
    for n in (0, 1, 2, 16, 17, 100, 1000):
        pieces = list(words(n))
        assert len(encoding.encode_ordinary("".join(pieces))) == n
        assert all(len(encoding.encode_ordinary(p)) == 1 for p in pieces)


def test_the_fakes_import_nothing_from_aigw() -> None:
    # Otherwise "equals what the upstream billed" would grade aigw with itself.
    script = (
        "import importlib, pkgutil, sys, tests.fakes\n"
        "names = [m.name for m in pkgutil.iter_modules(tests.fakes.__path__)]\n"
        "assert {'upstream', 'responses', 'anthropic', 'gemini', 'azure'} <= set(names), names\n"
        "for name in names:\n"
        "    if not name.startswith('test_'):\n"
        "        importlib.import_module('tests.fakes.' + name)\n"
        "print(sorted(m for m in sys.modules if m == 'aigw' or m.startswith('aigw.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert done.stdout.strip() == "[]"


def test_encodings_are_tiktokens_own_read_offline() -> None:
    # Cookbook section 5 ("Comparing encodings"): 9 tokens in cl100k_base, 8 in o200k_base.
    assert n_tokens("お誕生日おめでとう", "cl100k_base") == 9
    assert n_tokens("お誕生日おめでとう", "o200k_base") == 8
    assert isinstance(load_encoding("o200k_base"), tiktoken.Encoding)


def test_non_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": HELLO}
    completion = client.chat.completions.create(**body)
    choice = completion.choices[0]
    assert choice.message.content == "".join(words(16))
    assert choice.finish_reason == "stop"
    assert completion.model == "gpt-4o"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16
    # The cookbook formula by hand: 3 per message + role + content, 3 priming the reply.
    assert completion.usage.prompt_tokens == 3 + n_tokens("user") + n_tokens("Say hello.") + 3
    stats = upstream.stats()
    assert (stats["chat_requests"], stats["completed"], stats["in_flight"]) == (1, 1, 0)


def test_prompt_tokens_are_openais_figures(client: openai.OpenAI) -> None:
    # The cookbook conversation OpenAI bills at 124 prompt tokens on gpt-4o and
    # 129 on gpt-4 (published figures; see tests/proxy/counting/published.py).
    for model, expected in (("gpt-4o", 124), ("gpt-4", 129)):
        usage = client.chat.completions.create(model=model, messages=COOKBOOK_MESSAGES).usage
        assert usage is not None and usage.prompt_tokens == expected


def test_prompt_tokens_count_text_parts_and_bill_tools_nothing(client: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": " hello."}]
    usage = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": parts}], tools=COOKBOOK_TOOLS
    ).usage
    expected = 3 + n_tokens("user") + n_tokens("Say") + n_tokens(" hello.") + 3
    assert usage is not None and usage.prompt_tokens == expected


def test_max_tokens_are_respected(client: openai.OpenAI) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        completion = client.chat.completions.create(model="gpt-4o", messages=HELLO, **{field: 5})
        assert completion.choices[0].message.content == "".join(words(5))
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.completion_tokens == 5
    ignoring = client.chat.completions.create(
        model="gpt-4o#ignore_max_tokens=true,tokens=30", messages=HELLO, max_tokens=5
    )
    assert ignoring.usage is not None and ignoring.usage.completion_tokens == 30
    assert ignoring.choices[0].finish_reason == "stop"


def test_stream_with_usage(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert deltas == list(words(10))  # one token per event
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 10
    assert upstream.wait_until(streams_open=0, completed=1)


def test_stream_wire_format(upstream: FakeUpstream) -> None:
    body = {
        "model": "gpt-4o",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines = sse_lines(upstream, {**body, "max_tokens": 3})
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("usage" in event for event in events)  # null until the last, as OpenAI does
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    without = sse_lines(upstream, {"model": "gpt-4o", "messages": HELLO, "stream": True})
    assert not any('"usage"' in line for line in without)
    forced = sse_lines(
        upstream, {**body, "stream_options": None}, **{"x-fake-scenario": '{"usage": true}'}
    )
    assert '"completion_tokens":16' in forced[-2]


def test_tool_calls_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "user", "content": '#scenario {"tool_calls": 2, "tokens": 6}\nUse tools.'}
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish, usage = None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            assert delta.function is not None
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["fake_tool_0", "fake_tool_1"]
    assert json.loads(calls[0]["arguments"]) == {"text": "".join(words(6))}
    expected = sum(n_tokens(c["arguments"]) for c in calls.values())
    assert usage is not None and usage.completion_tokens == expected


def test_scripted_tool_call_non_stream(client: openai.OpenAI) -> None:
    scenario = {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}
    completion = client.chat.completions.create(
        model="gpt-4o", messages=HELLO, extra_headers={"x-fake-scenario": json.dumps(scenario)}
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]


def test_echo_and_fixed_content(client: openai.OpenAI) -> None:
    echoed = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": '#scenario {"echo": true}\nRépète: 日本語 ok'}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in echoed if c.choices)
    assert text == "Répète: 日本語 ok"
    fixed = client.chat.completions.create(
        model='gpt-4o#{"content": "Fixed answer."}', messages=HELLO
    )
    assert fixed.choices[0].message.content == "Fixed answer."


def test_scenario_sources_and_precedence(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    def tokens(model: str = "gpt-4o", content: str = "hi", **kwargs: Any) -> int:
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], **kwargs
        )
        assert completion.usage is not None
        return completion.usage.completion_tokens

    assert tokens() == 16
    upstream.set_scenario(tokens=2)
    assert tokens() == 2  # control default
    assert tokens(metadata={"fake_scenario": '{"tokens": 3}'}) == 3
    assert tokens(model="gpt-4o#tokens=4", metadata={"fake_scenario": '{"tokens": 3}'}) == 4
    assert tokens(model="gpt-4o#tokens=4", content='#scenario {"tokens": 5}\nhi') == 5
    header = {"x-fake-scenario": '{"tokens": 6}'}
    assert tokens(content='#scenario {"tokens": 5}\nhi', extra_headers=header) == 6
    upstream.reset()
    assert tokens() == 16


def test_bad_scenarios_are_refused(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown scenario knobs: tokenz"):
        client.chat.completions.create(model="gpt-4o#tokenz=3", messages=HELLO)
    response = httpx.post(f"{upstream.root}/_control/scenario", json={"status": "soon"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, openai.BadRequestError, None),
        (401, openai.AuthenticationError, "invalid_api_key"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (500, openai.InternalServerError, None),
        (503, openai.InternalServerError, None),
    ],
)
def test_status_codes(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(error) as raised:
        client.chat.completions.create(model=f"gpt-4o#status={status}", messages=HELLO, stream=True)
    assert raised.value.status_code == status
    assert raised.value.code == code
    body = raised.value.body
    assert isinstance(body, dict) and body["type"]  # the OpenAI envelope's "error" object
    retry_after = raised.value.response.headers.get("retry-after")
    assert retry_after == ("1" if status == 429 else None)


def test_reset_mid_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o#reset_after=3", messages=HELLO, stream=True
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", *words(3)]
    stats = upstream.wait_until(in_flight=0, resets=1)
    assert stats["client_disconnects"] == 0 and stats["completed"] == 0


def test_reset_is_a_tcp_rst(upstream: FakeUpstream) -> None:
    host, port = upstream.root.removeprefix("http://").split(":")
    body = json.dumps({"model": "gpt-4o#reset_after=1", "stream": True, "messages": HELLO})
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body.encode())
        )
        with pytest.raises(ConnectionResetError):  # not a clean EOF
            while sock.recv(65536):
                pass


def test_client_disconnect_is_seen_at_once(upstream: FakeUpstream) -> None:
    body = {"model": "gpt-4o#stall_after=2", "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST", f"{upstream.url}/chat/completions", json=body, timeout=10
    ) as response:
        lines = response.iter_lines()
        events = [next(lines) for _ in range(6)]  # role + 2 tokens, each followed by a blank
        assert sum(line.startswith("data:") for line in events) == 3
        assert upstream.stats()["streams_open"] == 1
    # Closing the response closed the connection: the stalled handler ends, and
    # the server sees the connection gone (within the second, on a busy machine
    # the server notes the close a moment after the handler's end).
    upstream.wait_until(
        timeout=1.0, in_flight=0, streams_open=0, client_disconnects=1, connections_open=0
    )


def test_stall_with_keepalive_comments(upstream: FakeUpstream) -> None:
    header = json.dumps({"stall_after": 1, "stall_seconds": 0.3, "keepalive_comments": 0.05})
    started = time.monotonic()
    lines = sse_lines(
        upstream,
        {"model": "gpt-4o", "messages": HELLO, "stream": True, "max_tokens": 2},
        **{"x-fake-scenario": header},
    )
    assert time.monotonic() - started >= 0.3
    comments = [i for i, line in enumerate(lines) if line.startswith(":")]
    assert 3 <= len(comments) <= 7
    assert {lines[i] for i in comments} == {": keep-alive"}
    # All of them between the first token and the second.
    assert comments == list(range(2, 2 + len(comments)))
    assert '"content":" quick"' in lines[comments[-1] + 1]
    assert lines[-1] == "data: [DONE]"


def test_malformed_event(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    lines = sse_lines(
        upstream, {"model": "gpt-4o#malformed_after=2", "messages": HELLO, "stream": True}
    )
    assert lines[3] == "data: {this is not json"
    assert lines[-1] == "data: [DONE]"
    with pytest.raises(json.JSONDecodeError):
        list(
            client.chat.completions.create(
                model="gpt-4o#malformed_after=0", messages=HELLO, stream=True
            )
        )


def test_delays(client: openai.OpenAI) -> None:
    started = time.monotonic()
    client.chat.completions.create(model="gpt-4o#delay_first_byte=0.3", messages=HELLO)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o#delay_per_chunk=0.02,tokens=10", messages=HELLO, stream=True
    )
    assert sum(1 for _ in stream) == 12  # role + 10 tokens + finish
    assert time.monotonic() - started >= 0.2


def test_last_request_shows_what_was_sent(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"unknown_field": {"kept": True}},
    ).close()
    last = upstream.stats()["last_request"]
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["Authorization"] == "Bearer sk-upstream-key"
    assert last["body"]["max_tokens"] == 7
    assert last["body"]["stream_options"] == {"include_usage": True}
    assert last["body"]["unknown_field"] == {"kept": True}
    assert upstream.requests()[-1] == last


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4",
        "gpt-3.5-turbo",
    ]


async def test_hundreds_of_concurrent_streams(upstream: FakeUpstream) -> None:
    upstream.set_scenario(tokens=20, delay_per_chunk=0.005)
    limits = httpx.Limits(max_connections=300)
    async with openai.AsyncOpenAI(
        base_url=upstream.url,
        api_key="sk-x",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits),
    ) as sdk:

        async def one() -> str:
            stream = await sdk.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        results = await asyncio.gather(*(one() for _ in range(300)))
    assert set(results) == {"".join(words(20))}
    stats = upstream.stats()
    assert stats["completed"] == 300 and stats["streams_open"] == 0


def test_require_key_and_stop_by_pid() -> None:
    server = start_fake_upstream({"tokens": 1}, require_key="sk-right")
    try:
        with (
            openai.OpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0) as sdk,
            pytest.raises(openai.AuthenticationError),
        ):
            sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
        with openai.OpenAI(base_url=server.url, api_key="sk-right", max_retries=0) as sdk:
            assert (
                sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
                .choices[0]
                .message.content
                == "The"
            )
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)


def test_xpyd_sim_answers_through_the_sdk() -> None:
    with (
        start_xpyd_sim(model="gpt-4o-mini") as sim,
        openai.OpenAI(base_url=sim.url, api_key="sk-x", max_retries=0) as sdk,
    ):
        completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens == 5
        stream = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [m.id for m in sdk.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(ProcessLookupError):
        os.kill(sim.pid, 0)

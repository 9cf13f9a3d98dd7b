"""Counting under attack (issue 10, items 1 and 2), against a real ``aigw serve``.

* Bodies built to make counting slow (a small tool schema listing one type
  several times over nested properties, JPEG data URLs padded with fill bytes,
  a quarter of a million tiny messages, megabytes of text) are counted while a
  probe polls ``/healthz``: its p99 stays under 50 ms, because nothing that
  grows with the body runs on the event loop and each part of the count is
  linear in the body's size.
* Prompt text hidden in fields the counter used to ignore (custom tools and
  custom tool calls, ``file`` parts, vLLM's ``chat_template`` and
  ``documents``, unknown fields, schema keywords the renderer drops, …) is
  counted: a key with an input limit of 1,000 refuses ~40k tokens in each,
  and nothing reaches the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import FakeUpstream
from tests.reliability.conftest import gateway_key, running_gateway, unique
from tests.support import Gateway

MODEL = "gpt-4o-mini"
INPUT_LIMIT = 1_000
BODY_LIMIT = 16 * 1024 * 1024
# ~40k tokens of prose on either encoding (checked below with a hand-made lower bound:
# 4,000 sentences of 10+ words).
HIDDEN = "The quick brown fox jumps over the lazy dog again. " * 4_000


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("counting-gateway")
    with running_gateway(database_url, root, AIGW_MAX_BODY_BYTES=str(BODY_LIMIT)) as started:
        yield started


@pytest.fixture(scope="module")
def token(gateway: Gateway, fake: FakeUpstream) -> str:
    key = gateway_key(
        gateway,
        fake.url,
        unique("counting"),
        MODEL,
        alias=unique("limited"),
        key_code="sk-counting-attacks",
        input_limit=INPUT_LIMIT,
        usage_limit="reject",
    )
    value: str = key["token"]
    return value


def _user(content: object) -> dict[str, Any]:
    return {"role": "user", "content": content}


def _exponential_schema(depth: int) -> dict[str, Any]:
    # Each level lists "object" four times over one property: rendered once per
    # listed type, recursively, that is 4**depth renderings of the leaf.
    node: dict[str, Any] = {"type": "string", "description": "leaf"}
    for _ in range(depth):
        node = {"type": ["object", "object", "object", "object"], "properties": {"p": node}}
    return node


def _padded_jpeg_url() -> str:
    # SOI, ~96 KB of fill bytes, then a frame header: a Python loop per fill byte.
    jpeg = b"\xff\xd8" + b"\xff" * 96_000 + b"\xff\xc0\x00\x11\x08\x04\x00\x04\x00"
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


# Built on first use, not at import: every pytest process collects this module, and
# ~40 MB of bodies cost each one a second that only the slow runs need.
@functools.cache
def _slow_bodies() -> dict[str, bytes]:
    schema = _exponential_schema(12)
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    jpeg = {"type": "image_url", "image_url": {"url": _padded_jpeg_url()}}
    bodies = {
        "exponential_schema": {"model": MODEL, "messages": [_user("hi")], "tools": tools},
        "padded_jpegs": {"model": MODEL, "messages": [_user([jpeg] * 60)]},
        "tiny_messages": {"model": MODEL, "messages": [_user(str(i)) for i in range(240_000)]},
        "tiny_parts": {
            "model": MODEL,
            "messages": [_user([{"type": "text", "text": str(i % 10)} for i in range(240_000)])],
        },
        "one_huge_text": {"model": MODEL, "messages": [_user("lorem ipsum dolor " * 400_000)]},
    }
    encoded = {
        name: json.dumps(body, separators=(",", ":")).encode() for name, body in bodies.items()
    }
    assert len(encoded["exponential_schema"]) < 2_000
    assert all(len(body) < BODY_LIMIT for body in encoded.values())
    return encoded


# Before worker processes (issue 10, item 1), on the shared 2-core VM: p99 40-62 ms
# while 7-8 MB bodies were parsed and walked in a thread of the gateway (orjson
# holds the GIL for a whole parse, ~40 ms per MB of tiny objects).
@pytest.mark.timing
@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["exponential_schema", "padded_jpegs", "tiny_messages", "tiny_parts", "one_huge_text"]
)
async def test_adversarial_bodies_do_not_stall_healthz(
    gateway: Gateway, token: str, name: str
) -> None:
    body = _slow_bodies()[name]
    response = await _attack_while_probing(gateway, token, "/v1/chat/completions", name, body)
    if name == "exponential_schema":
        # Rendered once per node it is a few hundred tokens: forwarded.
        assert response.status_code == 200, response.text[:300]
    else:
        assert response.status_code == 400, (name, response.text[:300])
        assert response.json()["error"]["code"] == "input_token_limit_exceeded"


def _tool_schema(depth: int, width: int) -> dict[str, Any]:
    # A schema nested *depth* levels, each with *width* described properties.
    node: dict[str, Any] = {"type": "string", "description": "a leaf value"}
    for level in range(depth):
        node = {
            "type": "object",
            "description": f"level {level}",
            "properties": {f"p{index}": node for index in range(width)},
        }
    return node


@functools.cache
def _slow_bodies_other_endpoints() -> dict[tuple[str, str], bytes]:
    """The same attacks in the shapes of ``/v1/responses`` and ``/v1/messages``."""
    jpeg_url = _padded_jpeg_url()
    jpeg_data = jpeg_url.split(",", 1)[1]
    schema = _tool_schema(6, 2)  # 127 described nodes, ~5 KB of JSON
    responses: dict[str, dict[str, Any]] = {
        "tiny_input_items": {"model": MODEL, "input": [_user(str(i % 10)) for i in range(240_000)]},
        "tiny_parts": {
            "model": MODEL,
            "input": [_user([{"type": "input_text", "text": str(i % 10)} for i in range(240_000)])],
        },
        "padded_jpegs": {
            "model": MODEL,
            "input": [_user([{"type": "input_image", "image_url": jpeg_url}] * 60)],
        },
        "repeated_tool_schemas": {
            "model": MODEL,
            "input": "hi",
            "tools": [
                {"type": "function", "name": f"f{i}", "parameters": schema} for i in range(500)
            ],
        },
    }
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg"}}
    image["source"]["data"] = jpeg_data  # type: ignore[index]
    messages: dict[str, dict[str, Any]] = {
        "tiny_messages": {"messages": [_user(str(i % 10)) for i in range(240_000)]},
        "tiny_parts": {
            "messages": [_user([{"type": "text", "text": str(i % 10)} for i in range(240_000)])]
        },
        "padded_jpegs": {"messages": [_user([image] * 60)]},
        "repeated_tool_schemas": {
            "messages": [_user("hi")],
            "tools": [{"name": f"f{i}", "input_schema": schema} for i in range(500)],
        },
    }
    bodies = {("/v1/responses", name): body for name, body in responses.items()}
    for name, body in messages.items():
        bodies["/v1/messages", name] = {"model": MODEL, "max_tokens": 16, **body}
    encoded = {
        where: json.dumps(body, separators=(",", ":")).encode() for where, body in bodies.items()
    }
    assert all(2_000_000 < len(body) < BODY_LIMIT for body in encoded.values())
    return encoded


# Before: the body was parsed, converted and counted in a thread of the gateway's
# process; see docs/reliability.md for the figures.
@pytest.mark.timing
@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/responses", "tiny_input_items"),
        ("/v1/responses", "tiny_parts"),
        ("/v1/responses", "padded_jpegs"),
        ("/v1/responses", "repeated_tool_schemas"),
        ("/v1/messages", "tiny_messages"),
        ("/v1/messages", "tiny_parts"),
        ("/v1/messages", "padded_jpegs"),
        ("/v1/messages", "repeated_tool_schemas"),
    ],
)
async def test_adversarial_bodies_to_responses_and_messages_do_not_stall_healthz(
    gateway: Gateway, token: str, fake: FakeUpstream, path: str, name: str
) -> None:
    body = _slow_bodies_other_endpoints()[path, name]
    before = fake.stats()["chat_requests"]
    response = await _attack_while_probing(gateway, token, path, name, body)
    assert response.status_code == 400, (path, name, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == "input_token_limit_exceeded", (path, name, error)
    assert fake.stats()["chat_requests"] == before


async def _attack_while_probing(
    gateway: Gateway, token: str, path: str, name: str, body: bytes
) -> httpx.Response:
    """POST *body* to *path* again and again while a probe polls ``/healthz``; the
    probe's p99 must stay under 50 ms. Returns the last answer."""
    latencies: list[float] = []
    done, ready = threading.Event(), threading.Event()

    async with httpx.AsyncClient(base_url=gateway.url, timeout=60.0) as http:

        def probe() -> None:
            # In a thread of its own, with its own connection: the test's event
            # loop is busy writing megabytes, which must not count as the gateway's delay.
            with httpx.Client(base_url=gateway.url, timeout=10.0) as own:
                for _ in range(5):  # warm the connection
                    assert own.get("/healthz").status_code == 200
                ready.set()
                while not done.is_set():
                    started = time.perf_counter()
                    response = own.get("/healthz")
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200
                    time.sleep(0.002)

        async def attack() -> httpx.Response:
            # The body is sent again and again (one at a time) until the probe
            # has enough samples for a p99 to mean something.
            try:
                for _ in range(60):
                    response = await http.post(
                        path,
                        content=body,
                        headers={
                            "Authorization": f"Bearer {token}",
                            "Content-Type": "application/json",
                        },
                    )
                    if len(latencies) >= 200:
                        break
                return response
            finally:
                done.set()

        probing = asyncio.ensure_future(asyncio.to_thread(probe))
        while not ready.is_set():
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        response = await attack()
        await probing
        took = time.perf_counter() - started

    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"\n{path} {name}: {len(body) / 1e6:.2f} MB, sent until 200 probes, {took * 1000:.0f} ms; "
        f"/healthz: {len(latencies)} probes, median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert p99 < 0.050, (path, name, f"p99 {p99 * 1000:.1f} ms")
    return response


def _hiding_places() -> dict[str, dict[str, Any]]:
    """Request bodies that each carry HIDDEN in one field (plus a short prompt)."""
    base: dict[str, Any] = {"model": MODEL, "messages": [_user("hi")]}
    weather = {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city"}},
        "required": ["city"],
    }

    def with_tool_schema(extra: dict[str, Any]) -> dict[str, Any]:
        schema = {**weather, "properties": {"city": {**weather["properties"]["city"], **extra}}}
        return {
            **base,
            "tools": [{"type": "function", "function": {"name": "w", "parameters": schema}}],
        }

    return {
        "custom_tool_description": {
            **base,
            "tools": [{"type": "custom", "custom": {"name": "c", "description": HIDDEN}}],
        },
        "custom_tool_call_in_history": {
            **base,
            "messages": [
                _user("hi"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "call_1", "type": "custom", "custom": {"name": "c", "input": HIDDEN}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            ],
        },
        "file_part": {
            **base,
            "messages": [
                _user(
                    [
                        {"type": "text", "text": "summarise"},
                        {"type": "file", "file": {"filename": "a.txt", "file_data": HIDDEN}},
                    ]
                )
            ],
        },
        "file_part_base64": {
            **base,
            "messages": [
                _user(
                    [
                        {
                            "type": "file",
                            "file": {
                                "filename": "a.txt",
                                "file_data": "data:text/plain;base64,"
                                + base64.b64encode(HIDDEN.encode()).decode(),
                            },
                        }
                    ]
                )
            ],
        },
        "vllm_chat_template": {**base, "chat_template": "{{ '" + HIDDEN + "' }}"},
        "vllm_documents": {**base, "documents": [{"title": "doc", "text": HIDDEN}]},
        "vllm_chat_template_kwargs": {**base, "chat_template_kwargs": {"system": HIDDEN}},
        "unknown_top_level_field": {**base, "x_prompt": HIDDEN},
        "unknown_message_field": {**base, "messages": [{**_user("hi"), "extra": HIDDEN}]},
        "reasoning_content_in_history": {
            **base,
            "messages": [
                _user("hi"),
                {"role": "assistant", "content": "ok", "reasoning_content": HIDDEN},
            ],
        },
        "unknown_content_part": {
            **base,
            "messages": [_user([{"type": "text", "text": "hi"}, {"type": "note", "note": HIDDEN}])],
        },
        "input_audio_format": {
            **base,
            "messages": [
                _user([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": HIDDEN}}])
            ],
        },
        "schema_const": with_tool_schema({"const": HIDDEN}),
        "schema_pattern": with_tool_schema({"pattern": HIDDEN}),
        "schema_unknown_keyword": with_tool_schema({"x-notes": HIDDEN}),
        "schema_defs": {
            **with_tool_schema({}),
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "w",
                        "parameters": {**weather, "$defs": {"n": {"description": HIDDEN}}},
                    },
                }
            ],
        },
        "function_extra_field": {
            **base,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "w", "parameters": weather, "examples": HIDDEN},
                }
            ],
        },
        "tool_call_id": {
            **base,
            "messages": [_user("hi"), {"role": "tool", "tool_call_id": HIDDEN, "content": "ok"}],
        },
        "metadata_value": {**base, "metadata": {"note": HIDDEN}},
        "user_field": {**base, "user": HIDDEN},
        "stop_sequences": {**base, "stop": [HIDDEN]},
        "prediction": {**base, "prediction": {"type": "content", "content": HIDDEN}},
        "remote_image_url": {
            **base,
            "messages": [
                _user(
                    [
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/?q=" + HIDDEN},
                        }
                    ]
                )
            ],
        },
        "tool_choice_object": {**base, "tool_choice": {"type": "allowed_tools", "note": HIDDEN}},
        "response_format_extra": {
            **base,
            "response_format": {"type": "json_object", "note": HIDDEN},
        },
    }


def test_hidden_text_is_at_least_40k_tokens() -> None:
    # An independent lower bound: one token per word at least (10 words a sentence).
    assert len(HIDDEN.split()) >= 40_000


@pytest.mark.parametrize("place", sorted(_hiding_places()))
def test_text_in_any_forwarded_field_counts_against_the_input_limit(
    gateway: Gateway, token: str, fake: FakeUpstream, place: str
) -> None:
    body = _hiding_places()[place]
    before = fake.stats()["chat_requests"]
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
    )
    assert response.status_code == 400, (place, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == "input_token_limit_exceeded", (place, error)
    assert fake.stats()["chat_requests"] == before


def test_custom_tool_through_the_official_sdk_is_counted(
    gateway: Gateway, token: str, fake: FakeUpstream
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
    before = fake.stats()["chat_requests"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "custom", "custom": {"name": "notes", "description": HIDDEN}}],
        )
    assert raised.value.code == "input_token_limit_exceeded"
    assert fake.stats()["chat_requests"] == before


def test_a_small_request_still_passes(gateway: Gateway, token: str, fake: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], user="u-1", metadata={"a": "b"}
    )
    # 3 + 1 ("user") + 1 ("hi") + 3: settings with no text count nothing.
    assert raw.headers["x-aigw-input-tokens"] == "8"
    assert raw.parse().choices


# --- input_audio parts: counted by their duration, not as base64 text -----------------
# OpenAI bills user audio at 10 tokens a second (measured: OpenAI community thread
# 971012); the clips below are made with the standard library's `wave` module and by
# hand-written MPEG-1 layer III frame headers, so their durations are known here.
BILLED_PER_SECOND = 10
PROMPT_FRAMING = 7  # 3 per message + 1 ("user") + 3 reply priming (the cookbook's rule)


def _wav(seconds: float, rate: int = 16_000, width: int = 2) -> bytes:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(width)
        clip.setframerate(rate)
        clip.writeframes(b"\x01" * int(seconds * rate) * width)
    return out.getvalue()


def _mp3(frames: int) -> bytes:
    # MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding: 417-byte frames of 1152 samples.
    return (b"\xff\xfb\x90\x00" + b"\x00" * 413) * frames


@pytest.mark.parametrize(
    ("fmt", "clip", "seconds"),
    [
        ("wav", _wav(3.0), 3.0),
        ("wav", _wav(2.5, rate=8_000, width=1), 2.5),
        ("mp3", _mp3(115), 115 * 1152 / 44_100),
    ],
)
def test_an_audio_clip_counts_by_its_duration_never_under_what_is_billed(
    gateway: Gateway, token: str, fake: FakeUpstream, fmt: str, clip: bytes, seconds: float
) -> None:
    """Before: the base64 counted as text (tens of thousands of tokens for a
    3-second clip), so a key with an input limit of 1,000 refused it."""
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                _user(
                    [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": base64.b64encode(clip).decode(), "format": fmt},
                        }
                    ]
                )
            ],
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
    )
    assert response.status_code == 200, response.text[:300]
    audio = int(response.headers["x-aigw-input-tokens"]) - PROMPT_FRAMING
    billed = seconds * BILLED_PER_SECOND
    assert billed <= audio <= 4 * billed, (audio, billed)


def test_a_long_audio_clip_is_over_the_limit(
    gateway: Gateway, token: str, fake: FakeUpstream
) -> None:
    # 120 s is billed at least 1,200 tokens: over the key's 1,000.
    before = fake.stats()["chat_requests"]
    clip = _wav(120.0, rate=8_000, width=1)
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                _user(
                    [
                        {
                            "type": "input_audio",
                            "input_audio": {
                                "data": base64.b64encode(clip).decode(),
                                "format": "wav",
                            },
                        }
                    ]
                )
            ],
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "input_token_limit_exceeded"
    assert fake.stats()["chat_requests"] == before

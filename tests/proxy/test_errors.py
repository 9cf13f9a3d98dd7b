"""Every error mapping of the proxy, and hostile input: OpenAI's envelope, the
x-aigw headers, nothing sent upstream on refusals, a usage record whenever a
key was resolved."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.proxy.conftest import MODEL, create_provider, ready_key, sdk, usage_rows

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def app(gateway: Any, upstream: Any) -> Any:
    app = await gateway(
        upstream_first_byte_timeout=0.5,
        upstream_idle_timeout=0.5,
        max_body_bytes=4096,
    )
    await create_provider(app.admin, upstream.url)
    return app


@pytest.fixture
async def proxy(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://aigw.test"
    ) as http:
        yield http


def envelope(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


# -- authentication and routing ---------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Basic Zm9vOmJhcg==", "Bearer aigw-unknown"]
)
async def test_unknown_or_missing_token_is_401(
    proxy: httpx.AsyncClient, db: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await proxy.post(
        "/v1/chat/completions", json={"messages": MESSAGES}, headers=headers
    )
    assert response.status_code == 401
    assert envelope(response)["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-aigw-request-id"]
    assert (await proxy.get("/v1/models", headers=headers)).status_code == 401
    assert (await proxy.head("/v1/models", headers=headers)).status_code == 401
    assert await usage_rows(db, expected=0, timeout=0.1) == []


async def test_disabled_key_is_403_with_a_record(app: Any, upstream: Any, db: str) -> None:
    key = await ready_key(app, status="disabled", input_limit=5)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "key_disabled"
    assert caught.value.response.headers["x-aigw-input-limit"] == "5"
    assert upstream.requests == []
    (row,) = await usage_rows(db)
    assert (row["outcome"], row["status_code"], row["error_code"]) == (
        "rejected",
        403,
        "key_disabled",
    )


async def test_other_model_is_refused_and_omitted_model_is_the_keys(
    app: Any, upstream: Any, proxy: httpx.AsyncClient, db: str
) -> None:
    key = await ready_key(app)
    headers = {"Authorization": f"Bearer {key['token']}"}
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(app, key["token"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.code == "model_not_allowed" and caught.value.param == "model"
    assert upstream.requests == []

    response = await proxy.post(
        "/v1/chat/completions", json={"messages": MESSAGES}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert upstream.last["model"] == MODEL
    assert upstream.headers[-1]["Authorization"] == f"Bearer {key_code(app, key)}"
    rows = await usage_rows(db, expected=2)
    assert [r["outcome"] for r in rows] == ["rejected", "completed"]


def key_code(app: Any, key: dict[str, Any]) -> str:
    resolved = app.state.keys.get(app.state.hasher.hash(key["token"]))
    return str(resolved.key_code)


async def test_models_lists_the_keys_model(app: Any) -> None:
    key = await ready_key(app)
    page = await sdk(app, key["token"]).models.list()
    assert [m.id for m in page.data] == [MODEL]
    assert page.data[0].owned_by == "fake"


# -- upstream failures ---------------------------------------------------------------


async def test_upstream_4xx_passes_through_in_openai_envelope(
    app: Any, upstream: Any, db: str
) -> None:
    key = await ready_key(app)
    upstream.script.status = 400
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "bad" and caught.value.message.endswith("nope")
    assert caught.value.response.headers["x-aigw-input-tokens"]

    upstream.script.status = 429
    upstream.script.error_body = b"slow down"
    with pytest.raises(openai.RateLimitError) as rate:
        await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert "slow down" in rate.value.message
    rows = await usage_rows(db, expected=2)
    assert [(r["outcome"], r["status_code"]) for r in rows] == [
        ("upstream_error", 400),
        ("upstream_error", 429),
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_5xx_is_502(app: Any, upstream: Any, db: str, stream: bool) -> None:
    key = await ready_key(app)
    upstream.script.status = 503
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(app, key["token"]).chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=stream
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    (row,) = await usage_rows(db)
    assert (row["outcome"], row["status_code"]) == ("upstream_error", 502)


async def test_unreachable_upstream_is_502(gateway: Any, db: str) -> None:
    app = await gateway()
    await create_provider(app.admin, "http://127.0.0.1:9/v1")  # discard port: refused
    key = await ready_key(app)
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_no_first_byte_in_time_is_504(app: Any, upstream: Any, db: str, stream: bool) -> None:
    key = await ready_key(app)
    upstream.script.first_byte_delay = 2.0
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(app, key["token"]).chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=stream
        )
    assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"
    (row,) = await usage_rows(db)
    assert (row["outcome"], row["status_code"], row["error_code"]) == (
        "upstream_error",
        504,
        "upstream_timeout",
    )


async def collect(stream: Any) -> tuple[str, BaseException | None]:
    text = ""
    try:
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    except openai.APIError as exc:
        return text, exc
    return text, None


async def test_stream_events_arrive_as_the_upstream_sends_them(app: Any, upstream: Any) -> None:
    key = await ready_key(app)
    upstream.script.output_tokens = 4
    upstream.script.chunk_delay = 0.3  # before each content chunk: 1.2 s in all
    started = time.monotonic()
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    arrivals = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    # A relay that buffered would deliver all four together, after the last.
    assert arrivals[0] < 0.9 and arrivals[-1] - arrivals[0] > 0.6, arrivals


async def test_idle_stream_ends_with_an_error_event_and_comments_do_not_count(
    app: Any, upstream: Any, db: str
) -> None:
    key = await ready_key(app)
    upstream.script.stall_after = 3
    upstream.script.keepalive_every = 0.1  # comments keep coming, events do not
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    text, error = await collect(stream)
    assert text == " the quick brown"
    assert isinstance(error, openai.APIError)
    assert error.body["code"] == "upstream_timeout"  # type: ignore[index]
    (row,) = await usage_rows(db)
    assert (row["outcome"], row["status_code"], row["output_tokens"]) == ("upstream_error", 200, 3)


async def test_total_deadline(gateway: Any, upstream: Any, db: str) -> None:
    app = await gateway(upstream_total_timeout=0.6)
    await create_provider(app.admin, upstream.url)
    key = await ready_key(app)
    upstream.script.output_tokens = 50
    upstream.script.chunk_delay = 0.05
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    text, error = await collect(stream)
    assert error is not None and error.body["code"] == "upstream_timeout"  # type: ignore[index]
    assert 0 < len(text.split()) < 50


async def test_reset_mid_stream_ends_with_an_error_event(app: Any, upstream: Any, db: str) -> None:
    key = await ready_key(app)
    upstream.script.reset_after = 4
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    text, error = await collect(stream)
    assert text == " the quick brown fox"
    assert error is not None and error.body["code"] == "upstream_error"  # type: ignore[index]
    (row,) = await usage_rows(db)
    assert row["outcome"] == "upstream_error" and row["output_tokens"] == 4


async def test_malformed_event_ends_with_an_error_event(app: Any, upstream: Any) -> None:
    key = await ready_key(app)
    upstream.script.malformed_after = 2
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    text, error = await collect(stream)
    assert text == " the quick"
    assert error is not None and error.body["code"] == "upstream_error"  # type: ignore[index]


async def test_finished_stream_missing_done_is_completed(app: Any, upstream: Any, db: str) -> None:
    key = await ready_key(app)
    upstream.script.omit_done = True
    stream = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    text, error = await collect(stream)
    assert error is None and len(text.split()) == 10
    (row,) = await usage_rows(db)
    assert row["outcome"] == "completed"


# -- hostile input ----------------------------------------------------------------------

BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed", b'{"messages": [', "invalid_json"),
    (
        "nan",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        "invalid_json",
    ),
    (
        "infinity",
        b'{"messages": [{"role": "user", "content": "x"}], "top_p": Infinity}',
        "invalid_json",
    ),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json"),
    ("invalid utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "invalid_json"),
    ("array body", b"[1, 2]", "invalid_request"),
    ("messages not a list", b'{"messages": "hi"}', "invalid_request"),
    ("no messages", b'{"messages": []}', "invalid_request"),
    ("message not an object", b'{"messages": ["hi"]}', "invalid_request"),
    ("unknown role", b'{"messages": [{"role": "wizard", "content": "x"}]}', "invalid_request"),
    ("content a number", b'{"messages": [{"role": "user", "content": 5}]}', "invalid_request"),
    (
        "negative max_tokens",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        "invalid_request",
    ),
    (
        "zero max_tokens",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        "invalid_request",
    ),
    (
        "absurd max_tokens",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000000000}',
        "invalid_request",
    ),
    (
        "bool max_tokens",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}',
        "invalid_request",
    ),
    (
        "float max_completion_tokens",
        b'{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 1.5}',
        "invalid_request",
    ),
    (
        "huge integer",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 30 + b"}",
        "invalid_request",
    ),
    (
        "stream not bool",
        b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
        "invalid_request",
    ),
    (
        "model not a string",
        b'{"messages": [{"role": "user", "content": "x"}], "model": 4}',
        "invalid_request",
    ),
]


@pytest.mark.parametrize(("case", "body", "code"), BAD_BODIES, ids=[c for c, _, _ in BAD_BODIES])
async def test_bad_input_is_a_4xx_envelope_with_a_record(
    app: Any, upstream: Any, proxy: httpx.AsyncClient, db: str, case: str, body: bytes, code: str
) -> None:
    key = await ready_key(app)
    response = await proxy.post(
        "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {key['token']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, (case, response.text)
    assert envelope(response)["code"] == code
    assert response.headers["x-aigw-input-limit"] == "0"
    assert upstream.requests == []
    (row,) = await usage_rows(db)
    assert (row["outcome"], row["status_code"], row["error_code"]) == ("rejected", 400, code)


async def test_wrong_content_type_is_415(
    app: Any, upstream: Any, proxy: httpx.AsyncClient, db: str
) -> None:
    key = await ready_key(app)
    response = await proxy.post(
        "/v1/chat/completions",
        content=b"messages=hi",
        headers={
            "Authorization": f"Bearer {key['token']}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 415 and envelope(response)["code"] == "unsupported_media_type"
    assert upstream.requests == []
    (row,) = await usage_rows(db)
    assert row["outcome"] == "rejected" and row["status_code"] == 415


async def test_oversized_bodies_are_413(
    app: Any, upstream: Any, proxy: httpx.AsyncClient, db: str
) -> None:
    key = await ready_key(app)
    headers = {"Authorization": f"Bearer {key['token']}", "Content-Type": "application/json"}
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * 10_000 + b'"}]}'
    response = await proxy.post("/v1/chat/completions", content=big, headers=headers)
    assert response.status_code == 413 and envelope(response)["code"] == "payload_too_large"

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    response = await proxy.post("/v1/chat/completions", content=chunked(), headers=headers)
    assert response.status_code == 413 and envelope(response)["code"] == "payload_too_large"
    assert upstream.requests == []
    # The streamed one reached the proxy (the declared one was refused at the door).
    (row,) = await usage_rows(db)
    assert (row["outcome"], row["status_code"]) == ("rejected", 413)


async def test_an_error_the_pipeline_lets_out_gets_its_handlers_answer(
    app: Any, proxy: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixed /v1 paths skip the routing layers (aigw.proxy.router.ProxyFastPath);
    an AigwError escaping a pipeline method is still answered by the app's handler
    for it, as the exception middleware did, not as a 500."""
    from aigw.proxy.exchange import ModelNotFound

    async def refuse(*_: Any) -> None:
        raise ModelNotFound("no such model here")

    monkeypatch.setattr(app.state.proxy, "list_models", refuse)
    response = await proxy.get("/v1/models")
    assert response.status_code == 404
    assert envelope(response)["code"] == "model_not_found"

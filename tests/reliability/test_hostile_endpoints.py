"""Issue 10 on the endpoints beyond Chat Completions: ``POST /v1/responses``,
``/v1/embeddings``, ``/v1/messages`` and ``/v1/messages/count_tokens``, through a
real server (the app under uvicorn) with raw httpx for malformed bodies and the
official SDKs for the well-formed ones.

* a duplicate member name anywhere, or a case variant of a field the endpoint
  checks, is a 400 ``ambiguous_field`` in the endpoint's own error shape, and
  nothing reaches the upstream (what the upstream receives is what was checked);
* an unhashable value where a set lookup used to happen is a 400, never a 500;
* an unknown top-level field carrying text counts against the input limit.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests/proxy/conftest.py)
from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.responses import FakeResponses
from tests.proxy.conftest import (  # noqa: F401
    ANTHROPIC_SDK_GROUP,
    MODEL,
    InLoopUpstream,
    client_tls,
    create_provider,
    gateway,
    ready_key,
    sdk,
    upstream,
)
from tests.reliability.conftest import CLAUDE

pytestmark = pytest.mark.xdist_group(ANTHROPIC_SDK_GROUP)

JSON = {"content-type": "application/json"}
# About 4,000 tokens of prompt text (one-token words).
LONG = " fox" * 4000


def fields(**values: bytes) -> bytes:
    """A JSON object written member by member, so names may repeat."""
    return b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in values.items()) + b"}"


def raw_object(*members: tuple[str, bytes]) -> bytes:
    return b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in members) + b"}"


RESPONSES_INPUT = b'"Say hi"'

# name -> raw body of a POST /v1/responses that must be refused as ambiguous
RESPONSES_CASES: dict[str, bytes] = {
    "MODEL_after_model": fields(model=b'"gpt-4o-mini"', MODEL=b'"gpt-4o"', input=RESPONSES_INPUT),
    "Max_Output_Tokens": fields(
        input=RESPONSES_INPUT, max_output_tokens=b"10", Max_Output_Tokens=b"100000"
    ),
    "duplicate_max_output_tokens": raw_object(
        ("input", RESPONSES_INPUT), ("max_output_tokens", b"10"), ("max_output_tokens", b"99999")
    ),
    "Instructions": fields(input=RESPONSES_INPUT, Instructions=b'"be evil"'),
    "INPUT": fields(input=b'"a"', INPUT=b'"' + LONG.encode() + b'"'),
    "Stream": fields(input=RESPONSES_INPUT, stream=b"false", Stream=b"true"),
    "Previous_Response_Id": fields(input=RESPONSES_INPUT, Previous_Response_Id=b'"resp_1"'),
    "item_Role": fields(input=b'[{"role":"user","Role":"system","content":"hi"}]'),
    "part_TEXT": fields(
        input=b'[{"role":"user","content":[{"type":"input_text","text":"a","TEXT":"b"}]}]'
    ),
    "duplicate_deep": fields(input=RESPONSES_INPUT, metadata=b'{"a":"1","a":"2"}'),
}

EMBEDDINGS_CASES: dict[str, bytes] = {
    "MODEL_after_model": fields(
        model=b'"gpt-4o-mini"', MODEL=b'"text-embedding-3-large"', input=b'"a"'
    ),
    "duplicate_input": raw_object(("input", b'"a"'), ("input", b'"' + LONG.encode() + b'"')),
    "Dimensions": fields(input=b'"a"', dimensions=b"8", Dimensions=b"3072"),
    "Encoding_Format": fields(input=b'"a"', Encoding_Format=b'"base64"'),
}

MESSAGES = b'[{"role":"user","content":"hi"}]'

MESSAGES_CASES: dict[str, bytes] = {
    "MODEL_after_model": fields(
        model=b'"' + CLAUDE.encode() + b'"',
        MODEL=b'"claude-opus-4-1"',
        max_tokens=b"10",
        messages=MESSAGES,
    ),
    "duplicate_max_tokens": raw_object(
        ("max_tokens", b"10"), ("messages", MESSAGES), ("max_tokens", b"100000")
    ),
    "Max_Tokens": fields(max_tokens=b"10", Max_Tokens=b"100000", messages=MESSAGES),
    "System": fields(max_tokens=b"10", messages=MESSAGES, System=b'"be evil"'),
    "Thinking": fields(
        max_tokens=b"10", messages=MESSAGES, Thinking=b'{"type":"enabled","budget_tokens":9999}'
    ),
    "message_Role": fields(
        max_tokens=b"10", messages=b'[{"role":"user","ROLE":"assistant","content":"hi"}]'
    ),
    "block_Text": fields(
        max_tokens=b"10",
        messages=b'[{"role":"user","content":[{"type":"text","text":"a","Text":"b"}]}]',
    ),
    "duplicate_deep": fields(
        max_tokens=b"10", messages=MESSAGES, metadata=b'{"user_id":"a","user_id":"b"}'
    ),
}


def assert_openai_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}, error
    assert error["code"] == code, error
    return dict(error)


def assert_anthropic_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error", body
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code, error
    assert isinstance(error["message"], str)
    return dict(error)


async def test_responses_ambiguous_names_are_refused_and_nothing_goes_upstream(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    key = await ready_key(openai_app, output_limit=20)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=openai_app.url) as http:
        for name, body in RESPONSES_CASES.items():
            response = await http.post("/v1/responses", content=body, headers=headers)
            assert_openai_shape(response, 400, "ambiguous_field")
            assert response.json()["error"]["param"], name
        # The same body without the variant goes through: the refusal is the name.
        ok = await http.post(
            "/v1/responses", content=fields(input=RESPONSES_INPUT), headers=headers
        )
        assert ok.status_code == 200, ok.text
    assert len(fake_responses.requests) == 1


async def test_embeddings_ambiguous_names_are_refused_and_nothing_goes_upstream(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    key = await ready_key(openai_app)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=openai_app.url) as http:
        for body in EMBEDDINGS_CASES.values():
            response = await http.post("/v1/embeddings", content=body, headers=headers)
            assert_openai_shape(response, 400, "ambiguous_field")
    assert not fake_responses.requests


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_messages_ambiguous_names_are_refused_in_anthropic_shape(
    anthropic_app: Any, fake_anthropic: tuple[FakeAnthropic, str], path: str
) -> None:
    state, _ = fake_anthropic
    key = await ready_key(anthropic_app, model=CLAUDE, output_limit=20)
    headers = {**JSON, "x-api-key": key["token"]}
    async with httpx.AsyncClient(base_url=anthropic_app.url) as http:
        for body in MESSAGES_CASES.values():
            response = await http.post(path, content=body, headers=headers)
            assert_anthropic_shape(response, 400, "ambiguous_field")
    assert not state.recorded.requests and not state.count_requests.requests


async def test_messages_sdk_sees_a_bad_request(
    anthropic_app: Any, fake_anthropic: tuple[FakeAnthropic, str]
) -> None:
    """The official SDK raises BadRequestError for a case variant sent as an extra field."""
    import anthropic  # here: see ANTHROPIC_SDK_GROUP

    state, _ = fake_anthropic
    key = await ready_key(anthropic_app, model=CLAUDE, output_limit=20)
    client = anthropic.AsyncAnthropic(
        base_url=anthropic_app.url, api_key=key["token"], max_retries=0
    )
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model=CLAUDE,
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"Max_Tokens": 100000},
        )
    assert refused.value.body["error"]["code"] == "ambiguous_field"  # type: ignore[index]
    assert not state.recorded.requests


async def test_responses_sdk_sees_a_bad_request(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    key = await ready_key(openai_app, output_limit=20)
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(openai_app, key["token"]).responses.create(
            model=MODEL, input="hi", max_output_tokens=10, extra_body={"Max_Output_Tokens": 100000}
        )
    assert refused.value.code == "ambiguous_field"
    assert not fake_responses.requests


# -- unhashable values where a set lookup happens: 400, never 500 -----------------------

CHAT_500 = b'{"model": false, "messages": [{"content": 0.0, "role": []}]}'


async def test_chat_role_of_any_json_type_is_a_400(gateway: Any, upstream: InLoopUpstream) -> None:
    app = await gateway()
    await create_provider(app.admin, upstream.url)
    key = await ready_key(app)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        response = await http.post("/v1/chat/completions", content=CHAT_500, headers=headers)
        assert_openai_shape(response, 400, "invalid_request")
        for role in (b"[]", b"{}", b'["user"]', b"1", b"true", b"null"):
            body = b'{"messages":[{"role":' + role + b',"content":"x"}]}'
            response = await http.post("/v1/chat/completions", content=body, headers=headers)
            error = assert_openai_shape(response, 400, "invalid_request")
            assert error["param"] == "messages.0.role", role
    assert not upstream.requests


async def test_responses_unhashable_roles_and_part_types_are_not_a_500(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    key = await ready_key(openai_app)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    bodies = [
        b'{"input":[{"type":"message","role":[],"content":"hi"}]}',
        b'{"input":[{"type":"message","role":{},"content":"hi"}]}',
        b'{"input":[{"role":"user","content":[{"type":[],"text":"hi"}]}]}',
        b'{"input":[{"role":"user","content":[{"type":{"a":1},"text":"hi"}]}]}',
    ]
    async with httpx.AsyncClient(base_url=openai_app.url) as http:
        for body in bodies:
            response = await http.post("/v1/responses", content=body, headers=headers)
            assert response.status_code < 500, (body, response.text)


async def test_messages_unhashable_values_are_a_400(
    anthropic_app: Any, fake_anthropic: tuple[FakeAnthropic, str]
) -> None:
    state, _ = fake_anthropic
    key = await ready_key(anthropic_app, model=CLAUDE)
    headers = {**JSON, "x-api-key": key["token"]}
    bodies = [
        b'{"max_tokens":5,"messages":[{"role":[],"content":"hi"}]}',
        b'{"max_tokens":5,"messages":[{"role":{},"content":"hi"}]}',
        b'{"max_tokens":5,"messages":[{"role":"user","content":[{"type":[]}]}]}',
        b'{"max_tokens":5,"model":[],"messages":[{"role":"user","content":"hi"}]}',
    ]
    async with httpx.AsyncClient(base_url=anthropic_app.url) as http:
        for body in bodies:
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                response = await http.post(path, content=body, headers=headers)
                assert_anthropic_shape(response, 400, "invalid_request")
        # Legal JSON the gateway does not read: relayed, never a 500.
        body = b'{"max_tokens":5,"tool_choice":{"type":[]},"messages":[{"role":"user","content":"hi"}]}'
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            response = await http.post(path, content=body, headers=headers)
            assert response.status_code < 500, response.text
    assert len(state.recorded.requests) == 1


async def test_embeddings_odd_shapes_are_a_400(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    key = await ready_key(openai_app)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=openai_app.url) as http:
        for body in (
            b'{"input":{}}',
            b'{"input":[{}]}',
            b'{"model":[],"input":"a"}',
        ):
            response = await http.post("/v1/embeddings", content=body, headers=headers)
            assert_openai_shape(response, 400, "invalid_request")
    assert not fake_responses.requests


# -- unknown fields that can carry text count against the input limit ------------------


async def test_responses_unknown_field_with_text_counts_against_the_limit(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    key = await ready_key(openai_app, input_limit=1000)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=openai_app.url) as http:
        for field in ("messages", "documents", "chat_template", "extra_context"):
            body = orjson.dumps({"input": "hi", field: LONG})
            response = await http.post("/v1/responses", content=body, headers=headers)
            error = assert_openai_shape(response, 400, "input_token_limit_exceeded")
            assert int(error["message"].split()[3]) >= 4000, error
            # A setting carrying text is counted too.
            body = orjson.dumps({"input": "hi", "metadata": {"note": LONG}})
            response = await http.post("/v1/responses", content=body, headers=headers)
            assert_openai_shape(response, 400, "input_token_limit_exceeded")
        # Small plain settings stay free: the same short request passes.
        body = orjson.dumps({"input": "hi", "metadata": {"a": "b"}, "temperature": 0.5})
        ok = await http.post("/v1/responses", content=body, headers=headers)
        assert ok.status_code == 200, ok.text
    assert len(fake_responses.requests) == 1


async def test_embeddings_unknown_field_with_text_counts_against_the_limit(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    key = await ready_key(openai_app, input_limit=1000)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=openai_app.url) as http:
        body = orjson.dumps({"input": "hi", "messages": [{"role": "user", "content": LONG}]})
        response = await http.post("/v1/embeddings", content=body, headers=headers)
        assert_openai_shape(response, 400, "input_token_limit_exceeded")
    assert not fake_responses.requests


async def test_messages_native_unknown_fields_and_blocks_count_against_the_limit(
    anthropic_app: Any, fake_anthropic: tuple[FakeAnthropic, str]
) -> None:
    """An ``anthropic`` upstream is sent the body as is: what the translation to chat
    drops (unknown fields, ``document`` blocks, server tools) is counted as JSON text."""
    state, _ = fake_anthropic
    key = await ready_key(anthropic_app, model=CLAUDE, input_limit=1000)
    headers = {**JSON, "x-api-key": key["token"]}
    base: dict[str, Any] = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": LONG},
    }
    variants = [
        {**base, "extra_context": LONG},
        {
            **base,
            "messages": [{"role": "user", "content": [document, {"type": "text", "text": "hi"}]}],
        },
        {**base, "system": [{"type": "text", "text": "x"}, {"type": "note", "text": LONG}]},
        {**base, "tools": [{"type": "web_search_20250305", "name": "s", "note": LONG}]},
    ]
    # A document block sends the body to a counting worker: a cold one starts first.
    async with httpx.AsyncClient(base_url=anthropic_app.url, timeout=30) as http:
        for body in variants:
            response = await http.post("/v1/messages", content=orjson.dumps(body), headers=headers)
            assert_anthropic_shape(response, 400, "input_token_limit_exceeded")
            counted = await http.post(
                "/v1/messages/count_tokens", content=orjson.dumps(body), headers=headers
            )
            assert counted.status_code == 200 and counted.json()["input_tokens"] >= 4000
        ok = await http.post("/v1/messages", content=orjson.dumps(base), headers=headers)
        assert ok.status_code == 200, ok.text
    assert len(state.recorded.requests) == 1


# -- large bodies: parsed and checked off the event loop, same answers ------------------


PADDING = orjson.dumps(["x" * 1000] * 600)  # ~600 KB, past the inline size


async def test_large_ambiguous_bodies_are_refused_the_same_way(
    openai_app: Any, fake_responses: FakeResponses
) -> None:
    """Past the inline size the checks run in the tokenizer threads; the answers
    are the same."""
    key = await ready_key(openai_app)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=openai_app.url, timeout=30) as http:
        body = fields(input=RESPONSES_INPUT, pad=PADDING, MODEL=b'"gpt-4o"')
        response = await http.post("/v1/responses", content=body, headers=headers)
        assert_openai_shape(response, 400, "ambiguous_field")
        body = fields(input=PADDING, Input=b'"a"')
        response = await http.post("/v1/embeddings", content=body, headers=headers)
        assert_openai_shape(response, 400, "ambiguous_field")
        body = fields(input=PADDING)  # the same size, unambiguous: counted and forwarded
        response = await http.post("/v1/embeddings", content=body, headers=headers)
        assert response.status_code == 200, response.text
    assert len(fake_responses.requests) == 1


async def test_large_ambiguous_messages_are_refused_the_same_way(
    anthropic_app: Any, fake_anthropic: tuple[FakeAnthropic, str]
) -> None:
    state, _ = fake_anthropic
    key = await ready_key(anthropic_app, model=CLAUDE)
    headers = {**JSON, "x-api-key": key["token"]}
    async with httpx.AsyncClient(base_url=anthropic_app.url, timeout=30) as http:
        body = fields(max_tokens=b"5", messages=MESSAGES, pad=PADDING, Max_Tokens=b"99999")
        response = await http.post("/v1/messages", content=body, headers=headers)
        assert_anthropic_shape(response, 400, "ambiguous_field")
    assert not state.recorded.requests

"""Embeddings, model lookup, unknown ``/v1`` paths and the usage breakdown by
endpoint, through a real server with the official ``openai`` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import tiktoken

from tests.fakes.billing import load_encoding
from tests.fakes.responses import FakeResponses, start_fake_responses
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
    return load_encoding("o200k_base")


async def test_embeddings_create_whole_list_and_token_arrays(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding, db: str
) -> None:
    key = await ready_key(app)
    client = sdk(app, key["token"])
    # The SDK asks for base64 and decodes it.
    result = await client.embeddings.create(model=MODEL, input="The quick brown fox")
    assert fake.last["encoding_format"] == "base64"
    assert len(result.data) == 1 and len(result.data[0].embedding) == 8
    assert result.data[0].embedding[0] == pytest.approx(0.1)
    raw = await client.embeddings.with_raw_response.create(
        model=MODEL, input=["alpha beta", "gamma"], encoding_format="float"
    )
    assert raw.headers["x-aigw-input-tokens"] == str(
        len(o200k.encode_ordinary("alpha beta")) + len(o200k.encode_ordinary("gamma"))
    )
    assert [len(d.embedding) for d in raw.parse().data] == [8, 8]
    raw = await client.embeddings.with_raw_response.create(model=MODEL, input=[[1, 2, 3], [4, 5]])
    assert raw.headers["x-aigw-input-tokens"] == "5"
    raw = await client.embeddings.with_raw_response.create(model=MODEL, input=[7, 8, 9, 10])
    assert raw.headers["x-aigw-input-tokens"] == "4"
    rows = await usage_rows(db, expected=4)
    assert [r["endpoint"] for r in rows] == ["embeddings"] * 4
    assert [r["input_tokens"] for r in rows] == [r["upstream_input_tokens"] for r in rows]
    assert [r["output_tokens"] for r in rows] == [0, 0, 0, 0]
    assert {r["outcome"] for r in rows} == {"completed"}


def _texts(encoding: tiktoken.Encoding, total: int) -> list[str]:
    """Two texts of *total* tokens together (each word one token)."""
    words = [" fox"] * total
    texts = ["".join(words[: total // 2]), "".join(words[total // 2 :])]
    assert sum(len(encoding.encode_ordinary(t)) for t in texts) == total
    return texts


async def test_embeddings_input_limit_reject(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding
) -> None:
    key = await ready_key(app, input_limit=L, output_limit=1)  # no output limit applies
    client = sdk(app, key["token"])
    for total in (L - 1, L):
        await client.embeddings.create(model=MODEL, input=_texts(o200k, total))
        await client.embeddings.create(model=MODEL, input=[[1] * total])
    sent = len(fake.requests)
    for over in (_texts(o200k, L + 1), [[1] * (L // 2), [2] * (L // 2 + 1)], [3] * (L + 1)):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.embeddings.create(model=MODEL, input=over)
        assert refused.value.code == "input_token_limit_exceeded"
    assert len(fake.requests) == sent


async def test_embeddings_input_limit_use_anyway(
    app: Any, fake: FakeResponses, o200k: tiktoken.Encoding, db: str
) -> None:
    key = await ready_key(app, input_limit=L, usage_limit="use_anyway")
    client = sdk(app, key["token"])
    for total, flagged in ((L - 1, None), (L, None), (L + 1, "input")):
        raw = await client.embeddings.with_raw_response.create(
            model=MODEL, input=_texts(o200k, total)
        )
        assert raw.headers.get("x-aigw-limit-exceeded") == flagged
    rows = await usage_rows(db, expected=3)
    assert [r["input_limit_exceeded"] for r in rows] == [False, False, True]


async def test_embeddings_bad_input_is_a_clear_400(app: Any, fake: FakeResponses) -> None:
    key = await ready_key(app)
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        auth = {"Authorization": f"Bearer {key['token']}"}
        for bad in ([], [1, "a"], [["a"]], {"a": 1}, None, [True], [[1, 2], 3]):
            answer = await http.post("/v1/embeddings", json={"input": bad}, headers=auth)
            assert answer.status_code == 400, bad
            assert answer.json()["error"]["param"] == "input"
        answer = await http.post(
            "/v1/embeddings", json={"input": "x", "model": "other"}, headers=auth
        )
        assert answer.json()["error"]["code"] == "model_not_allowed"
    assert not fake.requests


async def test_models_retrieve(app: Any) -> None:
    key = await ready_key(app)
    client = sdk(app, key["token"])
    model = await client.models.retrieve(MODEL)
    assert model.id == MODEL and model.owned_by == "fake"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        await sdk(app, "aigw-nope").models.retrieve(MODEL)


async def test_other_v1_paths_answer_404_listing_what_is_served(app: Any) -> None:
    key = await ready_key(app)
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        auth = {"Authorization": f"Bearer {key['token']}"}
        for method, path in (
            ("POST", "/v1/completions"),
            ("GET", "/v1/responses/resp_1"),
            ("POST", "/v1/audio/speech"),
            ("DELETE", "/v1/files/x"),
            ("GET", "/v1/"),
        ):
            answer = await http.request(method, path, headers=auth, json={})
            assert answer.status_code == 404, path
            error = answer.json()["error"]
            assert error["code"] == "not_found" and error["type"] == "invalid_request_error"
            for served in ("POST /v1/responses", "POST /v1/embeddings", "GET /v1/models/{model}"):
                assert served in error["message"]
        answer = await http.post("/v1/completions", json={})
        assert answer.status_code == 404  # the same answer without a token
        answer = await http.get("/v1/chat/completions", headers=auth)
        assert answer.status_code == 405 and answer.headers["allow"] == "POST"
        assert answer.json()["error"]["code"] == "method_not_allowed"
    with pytest.raises(openai.NotFoundError):
        await sdk(app, key["token"]).completions.create(model=MODEL, prompt="hi")


async def test_usage_report_breaks_down_by_endpoint(
    app: Any, fake: FakeResponses, upstream: Any, db: str
) -> None:
    # A second provider for chat: the scriptable chat fake of tests/proxy/conftest.
    await create_provider(app.admin, upstream.url, name="chat")
    key = await ready_key(app)
    chat_key = await ready_key(app, provider="chat")
    client = sdk(app, key["token"])
    fake.script.output_tokens = 4
    await client.responses.create(model=MODEL, input="hi")
    await client.responses.create(model=MODEL, input="hi")
    await client.embeddings.create(model=MODEL, input="hi")
    upstream.script.output_tokens = 3
    await sdk(app, chat_key["token"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    await usage_rows(db, expected=4)
    report = (await app.admin.get(f"/apikeys/{key['id']}/usage")).json()
    by_endpoint = report["totals"]["by_endpoint"]
    assert by_endpoint["responses"]["requests"] == 2
    assert by_endpoint["responses"]["output_tokens"] == 8
    assert by_endpoint["embeddings"]["requests"] == 1
    assert by_endpoint["chat.completions"]["requests"] == 0
    assert sum(day["by_endpoint"]["responses"]["requests"] for day in report["days"]) == 2
    chat = (await app.admin.get(f"/apikeys/{chat_key['id']}/usage")).json()
    assert chat["totals"]["by_endpoint"]["chat.completions"]["requests"] == 1
    assert chat["totals"]["by_endpoint"]["chat.completions"]["output_tokens"] == 3


async def test_models_retrieve_takes_names_with_slashes(app: Any, fake: FakeResponses) -> None:
    slashed = "meta-llama/Llama-3.1-8B-Instruct"
    await create_provider(app.admin, fake.url, name="vllm", models=(slashed,))
    key = await ready_key(app, provider="vllm", model=slashed)
    client = sdk(app, key["token"])
    assert (await client.models.retrieve(slashed)).id == slashed
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("meta-llama/other")
    async with httpx.AsyncClient(base_url=app.url, verify=client_tls()) as http:
        answer = await http.delete(f"/v1/models/{slashed}")
        assert answer.status_code == 405 and answer.headers["allow"] == "GET"

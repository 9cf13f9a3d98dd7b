"""Which ``x-aigw-*`` headers an answer carries, as the README states it:

- every answer has ``x-aigw-request-id``;
- an answer to a resolved key has its three limit headers;
- ``x-aigw-input-tokens`` only once the prompt was counted, so a refusal that
  came first (disabled key, other model, malformed body) never reads as "your
  prompt was 0 tokens";
- a 401 knows no key, so it carries no key headers.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.proxy.conftest import MODEL, create_provider, ready_key

# Hand count, OpenAI's published rule (cookbook "How to count tokens"): 3 per
# message + "user" (1) + "hello" (1) + 3 priming the reply = 8.
MESSAGES = [{"role": "user", "content": "hello"}]
HELLO_TOKENS = 8
KEY_HEADERS = ("x-aigw-input-limit", "x-aigw-output-limit", "x-aigw-usage-limit")


@pytest.fixture
async def app(gateway: Any, upstream: Any) -> Any:
    app = await gateway()
    await create_provider(app.admin, upstream.url)
    return app


@pytest.fixture
async def proxy(app: Any) -> Any:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://aigw.test"
    ) as http:
        yield http


async def post(proxy: httpx.AsyncClient, token: str, body: Any) -> httpx.Response:
    return await proxy.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    )


async def test_refusals_before_counting_send_no_input_tokens(
    app: Any, proxy: httpx.AsyncClient
) -> None:
    disabled = await ready_key(app, status="disabled", input_limit=5)
    enabled = await ready_key(app, input_limit=5)
    answers = {
        "key_disabled": await post(proxy, disabled["token"], {"messages": MESSAGES}),
        "model_not_allowed": await post(
            proxy, enabled["token"], {"model": "gpt-4o", "messages": MESSAGES}
        ),
        "invalid_request": await post(proxy, enabled["token"], {"messages": []}),
    }
    for code, response in answers.items():
        assert response.status_code in (400, 403), response.text
        assert response.json()["error"]["code"] == code, response.text
        assert "x-aigw-input-tokens" not in response.headers, code
        assert response.headers["x-aigw-input-limit"] == "5", code
        for name in (*KEY_HEADERS, "x-aigw-request-id"):
            assert response.headers[name], (code, name)


async def test_counted_answers_send_the_count(app: Any, proxy: httpx.AsyncClient) -> None:
    small = await ready_key(app, input_limit=HELLO_TOKENS - 1)
    refused = await post(proxy, small["token"], {"model": MODEL, "messages": MESSAGES})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "input_token_limit_exceeded"
    assert refused.headers["x-aigw-input-tokens"] == str(HELLO_TOKENS)

    roomy = await ready_key(app, input_limit=HELLO_TOKENS)
    served = await post(proxy, roomy["token"], {"model": MODEL, "messages": MESSAGES})
    assert served.status_code == 200, served.text
    assert served.headers["x-aigw-input-tokens"] == str(HELLO_TOKENS)


async def test_401_carries_the_request_id_and_no_key_headers(
    proxy: httpx.AsyncClient, db: str
) -> None:
    response = await post(proxy, "aigw-unknown", {"messages": MESSAGES})
    assert response.status_code == 401
    assert response.headers["x-aigw-request-id"]
    present = [name for name in response.headers if name.startswith("x-aigw-")]
    assert present == ["x-aigw-request-id"]

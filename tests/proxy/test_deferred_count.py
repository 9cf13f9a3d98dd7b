"""A request the size bound already proves within its input limit is answered
without waiting for its exact count (issue 15: added time to first byte ~ 0);
the count still reaches the usage record, exactly, after the answer."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from aigw.proxy.admission import Admission
from tests.conftest import SharedFakeUpstream
from tests.fakes import FakeUpstream
from tests.proxy.conftest import MODEL, create_provider, ready_key, usage_rows

PROMPT = "Count me exactly, but not before you answer. " * 2000


@pytest.fixture(scope="module")
def fake(shared_fake_upstream: SharedFakeUpstream) -> FakeUpstream:
    return shared_fake_upstream.fresh()


async def test_the_answer_does_not_wait_for_the_count_the_record_does(
    gateway: Any, fake: FakeUpstream, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await gateway()
    await create_provider(app.admin, fake.url)
    key = await ready_key(app, input_limit=0, output_limit=0)  # no input limit: the bound admits
    counting_may_end = asyncio.Event()
    count = Admission._count

    async def held_count(self: Admission, *args: Any) -> Any:
        await counting_may_end.wait()  # the exact count ends only once the answer is in
        return await count(self, *args)

    monkeypatch.setattr(Admission, "_count", held_count)
    fake.set_scenario(tokens=5)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {key['token']}"}
    async with httpx.AsyncClient(base_url=app.url, timeout=10) as client:
        response = await asyncio.wait_for(
            client.post("/v1/chat/completions", json=body, headers=headers), 5
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert "x-aigw-input-tokens" not in response.headers  # not counted when it was sent
    counting_may_end.set()
    rows = await usage_rows(db)
    # The fake bills the prompt by its own rules (tiktoken and OpenAI's formula).
    assert rows[0]["upstream_input_tokens"] > len(PROMPT) // 10
    assert rows[0]["input_tokens"] == rows[0]["upstream_input_tokens"]

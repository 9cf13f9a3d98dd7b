"""End to end with real processes: ``aigw serve`` under uvicorn, the fake upstream
(and xpyd-sim) as servers of their own, the official ``openai`` SDK (sync and
async) as the client.

The tests that need a default gateway take the worker's shared one
(``gateway_process``: reset for the test, usage written every 0.05 s); those that
need their own settings, or stop it, start their own."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from aigw.proxy.counting import Encoders
from tests.fakes import FakeUpstream, start_fake_upstream, start_xpyd_sim
from tests.proxy.conftest import MODEL, usage_rows
from tests.support import Gateway

MESSAGES = [{"role": "user", "content": "Tell me about foxes."}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with start_fake_upstream() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()


@pytest.fixture(scope="module")
def encoding() -> Iterator[Any]:
    encoders = Encoders.load()
    yield encoders.get("o200k_base")
    encoders.close()


def setup_key(gateway: Gateway, base_url: str, **key: Any) -> dict[str, Any]:
    with gateway.admin() as admin:
        provider = admin.post(
            "/providers",
            json={
                "name": "fake",
                "kind": "openai",
                "base_url": base_url,
                "models": [{"name": MODEL}],
            },
        )
        assert provider.status_code in (201, 409), provider.text
        body = {
            "alias": key.pop("alias", "e2e"),
            "provider": "fake",
            "model": MODEL,
            "key_code": "sk-e2e-upstream-secret",
            "status": "enabled",
            "input_limit": 0,
        }
        body.update(key)
        created = admin.post("/apikeys", json=body)
        assert created.status_code == 201, created.text
        return dict(created.json())


def wait_usable(gateway: Gateway, token: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("key never became usable")


async def test_openai_sdk_sync_and_async_stream_and_not(
    gateway_process: Gateway, fake: FakeUpstream, db: str, encoding: Any
) -> None:
    gateway = gateway_process
    key = setup_key(gateway, fake.url, output_limit=12)
    wait_usable(gateway, key["token"])
    fake.set_scenario(tokens=40, ignore_max_tokens=True)
    base_url = f"{gateway.url}/v1"

    with openai.OpenAI(base_url=base_url, api_key=key["token"], max_retries=0) as sync:
        completion = sync.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert len(encoding.encode_ordinary(completion.choices[0].message.content)) == 12
        assert completion.choices[0].finish_reason == "length"
        text = ""
        finish = None
        for chunk in sync.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        assert len(encoding.encode_ordinary(text)) == 12 and finish == "length"

    async with openai.AsyncOpenAI(base_url=base_url, api_key=key["token"], max_retries=0) as client:
        fake.set_scenario(tokens=5)
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "The quick brown fox jumps"
        for header in ("input-tokens", "input-limit", "output-limit", "usage-limit", "request-id"):
            assert raw.headers[f"x-aigw-{header}"]
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        # The gateway's input count equals what the upstream billed (the fake
        # counts like OpenAI does).
        assert chunks[-1].usage.prompt_tokens == int(raw.headers["x-aigw-input-tokens"])

    # The upstream saw the decrypted key code, never the client token.
    sent = fake.last_request()
    assert sent is not None
    assert sent["headers"]["Authorization"] == "Bearer sk-e2e-upstream-secret"
    assert sent["body"]["stream_options"] == {"include_usage": True}
    rows = await usage_rows(db, expected=4)
    assert [r["outcome"] for r in rows] == ["truncated", "truncated", "completed", "completed"]
    assert [r["output_tokens"] for r in rows] == [12, 12, 5, 5]
    assert "sk-e2e-upstream-secret" not in gateway.logs()
    assert key["token"] not in gateway.logs()


async def test_client_disconnect_leaves_a_record_and_closes_the_upstream(
    gateway_process: Gateway, fake: FakeUpstream, db: str
) -> None:
    gateway = gateway_process
    key = setup_key(gateway, fake.url)
    wait_usable(gateway, key["token"])
    fake.set_scenario(tokens=400, delay_per_chunk=0.03)
    k = 5
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {key['token']}"},
        ) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                if (
                    line.startswith("data: ")
                    and '"content":"' in line
                    and '"content":""' not in line
                ):
                    seen += 1
                    if seen == k:
                        break
        gone_at = time.monotonic()
    # The upstream request is closed within a second of the client leaving.
    stats = await asyncio.to_thread(fake.wait_until, 1.0, client_disconnects=1, streams_open=0)
    assert stats["completed"] == 0
    elapsed = time.monotonic() - gone_at
    assert elapsed < 1.0
    (row,) = await usage_rows(db)
    assert row["outcome"] == "client_disconnected" and row["status_code"] == 200
    # What was relayed: at least what we read, at most what one more event adds.
    assert k <= row["output_tokens"] <= k + 2, row["output_tokens"]


async def test_a_change_through_one_process_reaches_another_within_a_second(
    gateway_process: Gateway, start_gateway_process: Callable[..., Gateway], fake: FakeUpstream
) -> None:
    first = gateway_process  # the worker's shared gateway, and one of this test's own
    second = start_gateway_process()
    key = setup_key(first, fake.url)
    headers = {"Authorization": f"Bearer {key['token']}"}

    def status_on(gateway: Gateway) -> int:
        return httpx.get(f"{gateway.url}/v1/models", headers=headers).status_code

    def seconds_until(gateway: Gateway, status: int, timeout: float = 5.0) -> float:
        started = time.monotonic()
        while status_on(gateway) != status:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{gateway.url} never answered {status}")
            time.sleep(0.005)
        return time.monotonic() - started

    assert seconds_until(second, 200) < 1.0  # a new key
    with first.admin() as admin:
        started = time.monotonic()
        assert admin.patch(f"/apikeys/{key['id']}", json={"status": "disabled"}).status_code == 200
        disable_commit = time.monotonic() - started
    disabled_after = seconds_until(second, 403)
    assert disabled_after < 1.0
    print(
        f"\npropagation: disable seen by the second process {disabled_after * 1000:.1f} ms "
        f"after the PATCH returned ({disable_commit * 1000:.1f} ms)"
    )
    with first.admin() as admin:
        rotated = admin.post(f"/apikeys/{key['id']}/token").json()["token"]
        admin.patch(f"/apikeys/{key['id']}", json={"status": "enabled"})
    assert seconds_until(second, 401) < 1.0  # the old token is gone everywhere
    headers = {"Authorization": f"Bearer {rotated}"}
    assert seconds_until(second, 200) < 1.0
    with first.admin() as admin:
        assert admin.delete(f"/apikeys/{key['id']}").status_code == 204
    assert seconds_until(second, 401) < 1.0


async def test_xpyd_sim_as_a_second_upstream(
    gateway_process: Gateway, db: str, encoding: Any
) -> None:
    with start_xpyd_sim(model=MODEL, require_key="sk-e2e-upstream-secret") as sim:
        gateway = gateway_process
        key = setup_key(gateway, sim.url, output_limit=6)
        wait_usable(gateway, key["token"])
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=key["token"], max_retries=0
        ) as client:
            completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
            # The gateway asked for at most 6 tokens; xpyd-sim made 6 words.
            assert len(completion.choices[0].message.content.split()) == 6
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, stream=True
                )
            ]
            assert all(c.usage is None for c in chunks)  # its usage chunk is stripped
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert len(text.split()) == 6
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7)
    rows = await usage_rows(db, expected=3)
    assert [r["outcome"] for r in rows] == ["truncated", "truncated", "rejected"]
    assert rows[1]["upstream_output_tokens"] == 6  # read from the stripped usage chunk


async def test_graceful_shutdown_flushes_pending_usage(
    start_gateway_process: Callable[..., Gateway], fake: FakeUpstream, db: str
) -> None:
    # Nothing would be written for a minute: only the shutdown flush can write it.
    gateway = start_gateway_process(AIGW_USAGE_FLUSH_INTERVAL="60")
    key = setup_key(gateway, fake.url)
    wait_usable(gateway, key["token"])
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=key["token"], max_retries=0
    ) as client:
        for _ in range(3):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert await usage_rows(db, expected=0, timeout=0) == []
    os.kill(gateway.proc.pid, signal.SIGTERM)
    assert gateway.proc.wait(15) == 0
    rows = await usage_rows(db, expected=3)
    assert len(rows) == 3

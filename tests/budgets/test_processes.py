"""Budgets across real ``aigw serve`` processes sharing one store (PostgreSQL, or
Redis with ``AIGW_REDIS_URL``): the budget is never exceeded under concurrency,
and a reservation held by a process killed with SIGKILL comes back once its
lease expires."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.budgets.conftest import MESSAGES, StoreView, billed_prompt, words_of
from tests.fakes import FakeUpstream
from tests.proxy.conftest import MODEL, create_key, create_provider
from tests.support import Gateway


async def _hammer(
    urls: list[str], token: str, requests: int, max_tokens: int | None = None
) -> list[int]:
    """*requests* concurrent streamed requests spread over *urls*; each result is the
    output tokens received (a hand count of the fake's one-token words), or -1 for
    a 429."""
    clients = [
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=60)
        for url in urls
    ]

    async def one(index: int) -> int:
        extra = {"max_tokens": max_tokens} if max_tokens else {}
        try:
            stream = await clients[index % len(clients)].chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, **extra
            )
        except openai.RateLimitError as exc:
            assert exc.code == "budget_exceeded"
            return -1
        text = []
        async for chunk in stream:
            text.extend(choice.delta.content or "" for choice in chunk.choices)
        return words_of("".join(text))

    return await asyncio.gather(*(one(i) for i in range(requests)))


@pytest.mark.slow
async def test_three_processes_never_pass_the_budget(
    start_gateway_process: Callable[..., Gateway], fake: FakeUpstream, store: StoreView
) -> None:
    fake.reset()
    fake.set_scenario(tokens=30, delay_per_chunk=0.01)
    gateways = [start_gateway_process(AIGW_BUDGET_OUTPUT_SLICE="16", **store.env) for _ in range(3)]
    with gateways[0].admin() as admin:
        await create_provider(admin, fake.url)
        key = await create_key(admin, budget_tokens=4000, budget_period="day")
    await asyncio.sleep(1.0)  # every process's key cache has it (NOTIFY: ~0.1 s)

    results = await _hammer([g.url for g in gateways], key["token"], 200)
    admitted = [r for r in results if r >= 0]
    spent = sum(billed_prompt() + words for words in admitted)
    await asyncio.sleep(1.5)  # settlements are written in batches
    [counter] = await store.counters(key["id"])
    print(
        f"\n[{store.kind}] budget 4000: {len(admitted)} of 200 admitted, {spent} tokens received "
        f"({spent / 4000:.1%}), counter used={counter['used']} reserved={counter['reserved']}"
    )
    assert spent == counter["used"] <= 4000 and counter["reserved"] == 0
    assert spent >= 0.95 * 4000


async def test_a_killed_process_gives_its_reservation_back(
    start_gateway_process: Callable[..., Gateway], fake: FakeUpstream, store: StoreView
) -> None:
    fake.reset()
    env = {"AIGW_BUDGET_LEASE_SECONDS": "2", **store.env}
    doomed, survivor = start_gateway_process(**env), start_gateway_process(**env)
    with doomed.admin() as admin:
        await create_provider(admin, fake.url)
        budget = billed_prompt() + 100
        key = await create_key(admin, budget_tokens=budget, budget_period="total")
    await asyncio.sleep(1.0)

    # A slow stream on the doomed process holds input + 100 (its max_tokens).
    fake.set_scenario(tokens=100, delay_per_chunk=1.0)
    holder = asyncio.create_task(_hammer([doomed.url], key["token"], 1, max_tokens=100))
    deadline = time.monotonic() + 10
    while await store.leases(key["id"]) == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    fake.set_scenario(tokens=10)
    assert await _hammer([survivor.url], key["token"], 1) == [-1]  # all of it is held

    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(10)
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        await holder
    killed_at = time.monotonic()
    while True:
        [result] = await _hammer([survivor.url], key["token"], 1)
        if result >= 0:
            break
        assert time.monotonic() - killed_at < 10, "the lease never expired"
        await asyncio.sleep(0.25)
    took = time.monotonic() - killed_at
    print(f"\n[{store.kind}] reservation back {took:.1f}s after SIGKILL (lease 2s)")
    assert result == 10 and 0 < took < 6
    while await store.leases(key["id"]):  # the survivor settles in its own time
        assert time.monotonic() - killed_at < 10
        await asyncio.sleep(0.05)

"""Budgets across real ``aigw serve`` processes sharing one store (PostgreSQL, or
Redis with ``AIGW_REDIS_URL``): the budget is never exceeded under concurrency, a
reservation held by a process killed with SIGKILL comes back once its lease
expires, and a running process crosses a period boundary into a fresh budget."""

from __future__ import annotations

import asyncio
import signal
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from tests.budgets.conftest import MESSAGES, StoreView, billed_prompt, words_of
from tests.fakes import FakeUpstream
from tests.proxy.conftest import MODEL, create_key, create_provider, usage_rows
from tests.support import START_SECONDS, Gateway


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

    try:
        return await asyncio.gather(*(one(i) for i in range(requests)))
    finally:  # a client left open past this test's event loop is closed by GC in the next one
        for client in clients:
            await client.close()


async def _start_together(
    start_gateway_process: Callable[..., Gateway], count: int, **env: str
) -> list[Gateway]:
    """*count* gateways started at once: their starts (imports, the lifespan) overlap
    on the machine's cores instead of queueing one after another."""
    return list(
        await asyncio.gather(
            *(asyncio.to_thread(start_gateway_process, **env) for _ in range(count))
        )
    )


async def _usable(gateways: list[Gateway], token: str, timeout: float = 10.0) -> None:
    """Wait until every gateway's key cache has the key (NOTIFY: ~0.1 s), rather
    than sleeping a second that a busy machine may still overrun."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        for gateway in gateways:
            while (await http.get(f"{gateway.url}/v1/models")).status_code != 200:
                assert time.monotonic() < deadline, f"{gateway.url} never had the key"
                await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_three_processes_never_pass_the_budget(
    start_gateway_process: Callable[..., Gateway], fake: FakeUpstream, store: StoreView
) -> None:
    fake.reset()
    fake.set_scenario(tokens=30, delay_per_chunk=0.01)
    gateways = await _start_together(
        start_gateway_process, 3, AIGW_BUDGET_OUTPUT_SLICE="16", **store.env
    )
    with gateways[0].admin() as admin:
        await create_provider(admin, fake.url)
        key = await create_key(admin, budget_tokens=4000, budget_period="day")
    await _usable(gateways, key["token"])

    results = await _hammer([g.url for g in gateways], key["token"], 200)
    admitted = [r for r in results if r >= 0]
    spent = sum(billed_prompt() + words for words in admitted)
    # Settlements are written in batches: wait for the last (up to 10 s).
    deadline = time.monotonic() + 10
    while True:
        [counter] = await store.counters(key["id"])
        if (counter["used"], counter["reserved"]) == (spent, 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
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
    doomed, survivor = await _start_together(start_gateway_process, 2, **env)
    with doomed.admin() as admin:
        await create_provider(admin, fake.url)
        budget = billed_prompt() + 100
        key = await create_key(admin, budget_tokens=budget, budget_period="total")
    await _usable([doomed, survivor], key["token"])

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


def _fixed_zone(folder: Path, name: str, offset: int) -> None:
    """A TZif file (RFC 8536, version 2) for a zone *offset* seconds east of UTC."""
    abbr = b"RLV\0"
    header = b"TZif2" + b"\0" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, len(abbr))
    data = header + struct.pack(">lBB", offset, 0, 0) + abbr
    sign, size = ("-" if offset >= 0 else "+"), abs(offset)  # POSIX TZ: west is positive
    rule = f"<RLV>{sign}{size // 3600}:{size % 3600 // 60:02d}:{size % 60:02d}"
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + data + f"\n{rule}\n".encode())


async def test_a_running_process_rolls_over_into_a_new_period(
    start_gateway_process: Callable[..., Gateway],
    fake: FakeUpstream,
    store: StoreView,
    tmp_path: Path,
) -> None:
    """The gateway's day ends while it runs: a key whose daily budget is used up is
    refused before the boundary and served after it. The boundary is made near by
    a time zone (AIGW_BUDGET_TIMEZONE) whose midnight falls a few seconds after the
    gateway is ready and the budget spent; the zone file is written here, so the
    boundary is known independently. The gateway reads the zone when it starts, so
    the margin covers its start, as long as the last starts of this worker took
    (12 s before any): where it took longer (a busy machine), the gateway is
    started again in a new zone with a margin from the time it took, rather than
    every run waiting the worst case."""
    fake.reset()
    budget = billed_prompt() + 10
    provider_made = False
    margin = 1.5 * max(START_SECONDS[-3:]) + 4 if START_SECONDS else 12.0
    for attempt in range(3):
        began = time.monotonic()
        midnight = (datetime.now(UTC) + timedelta(seconds=margin)).replace(microsecond=0)
        offset = 86400 - (midnight - midnight.replace(hour=0, minute=0, second=0)).seconds
        if offset > 14 * 3600:
            offset -= 86400  # keep it within real zones' range (-12 h .. +14 h)
        zones = tmp_path / f"zones-{attempt}"
        _fixed_zone(zones, "Test/Rollover", offset)
        gateway = start_gateway_process(
            AIGW_BUDGET_TIMEZONE="Test/Rollover", PYTHONTZPATH=str(zones), **store.env
        )
        with gateway.admin() as admin:
            if not provider_made:
                await create_provider(admin, fake.url)
                provider_made = True
            key = await create_key(admin, budget_tokens=budget, budget_period="day")
            read = admin.get(f"/apikeys/{key['id']}").json()
        await _usable([gateway], key["token"])
        fake.set_scenario(tokens=10)
        assert await _hammer([gateway.url], key["token"], 1) == [10]
        again = await _hammer([gateway.url], key["token"], 1)
        # Two seconds to spare: the read and the day's requests were all before midnight.
        if (midnight - datetime.now(UTC)).total_seconds() > 2:
            assert datetime.fromisoformat(read["budget_resets_at"]) == midnight
            assert again == [-1]  # the day's budget is spent
            break
        gateway.stop()
        margin = 1.5 * (time.monotonic() - began) + 4  # what this start took, and more
    else:
        pytest.fail("the gateway took too long to start: no time left before midnight")

    await asyncio.sleep((midnight - datetime.now(UTC)).total_seconds() + 0.2)
    assert await _hammer([gateway.url], key["token"], 1) == [10]  # a new day
    deadline = time.monotonic() + 10
    while sum(c["used"] for c in await store.counters(key["id"])) < 2 * budget:
        assert time.monotonic() < deadline, "the settlements were never written"
        await asyncio.sleep(0.05)
    days = sorted(
        (c["period_start"], c["used"], c["reserved"]) for c in await store.counters(key["id"])
    )
    assert days == [(midnight - timedelta(days=1), budget, 0), (midnight, budget, 0)]
    with gateway.admin() as admin:
        read = admin.get(f"/apikeys/{key['id']}").json()
    assert read["budget_used"] == budget
    assert datetime.fromisoformat(read["budget_resets_at"]) == midnight + timedelta(days=1)


async def test_cut_rates_and_use_anyway_through_a_served_process(
    start_gateway_process: Callable[..., Gateway], fake: FakeUpstream, db: str
) -> None:
    """The in-process tests of test_budgets.py, once through ``aigw serve``: the cut
    where the budget has no room, a rate limit, a ``use_anyway`` flag."""
    fake.reset()
    pg = StoreView("pg", db)
    gateway = start_gateway_process(AIGW_BUDGET_OUTPUT_SLICE="8", **pg.env)
    prompt = billed_prompt()
    with gateway.admin() as admin:
        await create_provider(admin, fake.url)
        cut = await create_key(admin, budget_tokens=prompt + 37, budget_period="day")
        rated = await create_key(admin, rpm_limit=2)
        lenient = await create_key(admin, budget_tokens=5, usage_limit="use_anyway")
    for key in (cut, rated, lenient):
        await _usable([gateway], key["token"])

    def client(key: dict) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=key["token"], max_retries=0, timeout=60
        )

    fake.set_scenario(tokens=200)
    stream = await client(cut).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    text, reason = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
    assert (words_of("".join(text)), reason) == (37, "length")  # a slice of 8 at a time

    fake.set_scenario(tokens=3)
    for _ in range(2):
        await client(rated).chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        await client(rated).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "rate_limited"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60

    response = await client(lenient).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES
    )
    assert response.headers["x-aigw-limit-exceeded"] == "budget"
    assert words_of(response.parse().choices[0].message.content or "") == 3

    rows = await usage_rows(db, expected=5)
    flags = {(str(r["api_key_id"]), r["budget_exceeded"], r["rate_exceeded"]) for r in rows}
    assert flags == {
        (cut["id"], False, False),
        (rated["id"], False, False),
        (rated["id"], False, True),
        (lenient["id"], True, False),
    }
    deadline = time.monotonic() + 10
    while [(c["used"], c["reserved"]) for c in await pg.counters(cut["id"])] != [(prompt + 37, 0)]:
        assert time.monotonic() < deadline, await pg.counters(cut["id"])
        await asyncio.sleep(0.05)

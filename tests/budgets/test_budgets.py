"""Budgets and rates through a real server (uvicorn), the OpenAI SDK and the fake
upstream process: the cut where no room is left, extension slice by slice,
settlement, rates, ``use_anyway`` flags, period rollover, a store outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from tests.budgets.conftest import MESSAGES, StoreView, billed_prompt, silent_server, words_of
from tests.fakes import FakeUpstream
from tests.proxy.conftest import MODEL, create_provider, ready_key, sdk, usage_rows


@pytest.fixture
async def app(gateway: Any, fake: FakeUpstream, store: StoreView) -> Any:
    fake.reset()
    app = await gateway(budget_output_slice=8, **store.settings)
    await create_provider(app.admin, fake.url)
    return app


async def settled(app: Any) -> None:
    await app.state.budget_store.flush(5.0)


async def stream_text(client: Any, **kwargs: Any) -> tuple[str, str | None]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, **kwargs
    )
    text, reason = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
    return "".join(text), reason


async def test_output_is_cut_exactly_where_the_budget_has_no_room(
    app: Any, fake: FakeUpstream, db: str, store: StoreView
) -> None:
    prompt = billed_prompt()
    budget = prompt + 37
    key = await ready_key(app, budget_tokens=budget, budget_period="day")
    fake.set_scenario(tokens=200)
    text, reason = await stream_text(sdk(app, key["token"]))
    # Reserved: input + a slice of 8; extended 8 at a time up to the 37 left.
    assert words_of(text) == 37 and reason == "length"
    await settled(app)
    assert [(c["used"], c["reserved"]) for c in await store.counters(key["id"])] == [(budget, 0)]
    assert await store.leases(key["id"]) == 0

    # Nothing is left: the next request is refused before going upstream.
    sent = fake.stats()["chat_requests"]
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "budget_exceeded"
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 0 < retry_after <= 24 * 3600
    assert fake.stats()["chat_requests"] == sent
    rows = await usage_rows(db, expected=2)
    assert [(r["outcome"], r["budget_exceeded"]) for r in rows] == [
        ("truncated", False),
        ("rejected", True),
    ]

    read = (await app.admin.get(f"/apikeys/{key['id']}")).json()
    assert read["budget_used"] == budget
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert datetime.fromisoformat(read["budget_resets_at"]) == datetime(
        tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC
    )


async def test_reservation_extends_slice_by_slice_while_there_is_room(
    app: Any, fake: FakeUpstream, db: str, store: StoreView
) -> None:
    key = await ready_key(app, budget_tokens=10_000)
    fake.set_scenario(tokens=100, chunk_tokens=3)
    text, reason = await stream_text(sdk(app, key["token"]))
    assert words_of(text) == 100 and reason == "stop"
    completion = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES
    )
    assert words_of(completion.choices[0].message.content or "") == 100
    await settled(app)
    used = 2 * (billed_prompt() + 100)
    assert [(c["used"], c["reserved"]) for c in await store.counters(key["id"])] == [(used, 0)]


async def test_whole_answer_is_cut_too(app: Any, fake: FakeUpstream, db: str) -> None:
    key = await ready_key(app, budget_tokens=billed_prompt() + 5, budget_period="total")
    fake.set_scenario(tokens=50)
    completion = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES
    )
    assert words_of(completion.choices[0].message.content or "") == 5
    assert completion.choices[0].finish_reason == "length"
    read = (await app.admin.get(f"/apikeys/{key['id']}")).json()
    await settled(app)
    read = (await app.admin.get(f"/apikeys/{key['id']}")).json()
    assert read["budget_used"] == billed_prompt() + 5 and read["budget_resets_at"] is None


async def test_concurrent_requests_in_one_process_never_pass_the_budget(
    app: Any, fake: FakeUpstream, db: str, store: StoreView
) -> None:
    per_request = billed_prompt() + 20
    budget = 10 * per_request + 7
    key = await ready_key(app, budget_tokens=budget)
    fake.set_scenario(tokens=20, delay_per_chunk=0.005)
    client = sdk(app, key["token"])

    async def one() -> int:
        try:
            text, _ = await stream_text(client)
        except openai.RateLimitError:
            return -1
        return words_of(text)

    results = await asyncio.gather(*(one() for _ in range(40)))
    admitted = [r for r in results if r >= 0]
    await settled(app)
    spent = sum(billed_prompt() + words for words in admitted)
    [counter] = await store.counters(key["id"])
    assert spent == counter["used"] <= budget and counter["reserved"] == 0
    assert spent >= budget - per_request  # at most one request's worth left unused


async def test_rate_limits(app: Any, fake: FakeUpstream, db: str) -> None:
    key = await ready_key(app, rpm_limit=3)
    client = sdk(app, key["token"])
    for _ in range(3):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "rate_limited"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60

    prompt = billed_prompt()
    fake.set_scenario(tokens=10)
    key = await ready_key(app, tpm_limit=2 * (prompt + 10) + prompt - 1)
    client = sdk(app, key["token"])
    for _ in range(2):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    await settled(app)
    # Two requests used 2 * (prompt + 10); a third's input no longer fits.
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "rate_limited"
    rows = await usage_rows(db, expected=7)
    assert sum(r["rate_exceeded"] for r in rows) == 2


async def test_use_anyway_forwards_and_flags(
    app: Any, fake: FakeUpstream, db: str, store: StoreView
) -> None:
    key = await ready_key(app, budget_tokens=5, usage_limit="use_anyway", rpm_limit=1)
    fake.set_scenario(tokens=10)
    client = sdk(app, key["token"])
    for expected in ("budget", "budget,rate"):
        response = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES
        )
        assert response.headers["x-aigw-limit-exceeded"] == expected
        assert words_of(response.parse().choices[0].message.content or "") == 10
    rows = await usage_rows(db, expected=2)
    assert [(r["budget_exceeded"], r["rate_exceeded"]) for r in rows] == [
        (True, False),
        (True, True),
    ]
    await settled(app)
    [counter] = await store.counters(key["id"])
    assert counter["used"] == 2 * (billed_prompt() + 10)
    metrics = (await app.admin.get("/metrics")).text
    assert (
        f'aigw_proxy_use_anyway_over_limit_total{{alias="{key["alias"]}",limit="budget",model="{MODEL}"}} 2.0'
        in metrics
    )


async def test_a_new_period_starts_from_zero(
    app: Any, fake: FakeUpstream, store: StoreView
) -> None:
    key = await ready_key(app, budget_tokens=100, budget_period="day")
    yesterday = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=1
    )
    await store.add_used(key["id"], yesterday, 100)
    fake.set_scenario(tokens=3)
    completion = await sdk(app, key["token"]).chat.completions.create(
        model=MODEL, messages=MESSAGES
    )
    assert completion.choices[0].finish_reason == "stop"
    await settled(app)
    used = sorted((c["period_start"], c["used"]) for c in await store.counters(key["id"]))
    assert [u for _, u in used] == [100, billed_prompt() + 3]


@contextlib.asynccontextmanager
async def store_hangs(app: Any, store: StoreView) -> AsyncIterator[None]:
    """Point the app's budget store at a server that accepts and never answers
    (timeout 0.5 s), then back at the real one."""
    backend = app.state.budget_store
    timeout = backend.timeout
    async with silent_server() as address:
        if store.kind == "redis":
            url, backend._url = backend._url, f"redis://{address}/0"
            real, backend._client = backend._client, None
        else:
            url, backend._dsn = backend._dsn, f"postgresql://aigw@{address}/none"
            real, backend._pool = backend._pool, None
        backend.timeout = 0.5
        try:
            yield
        finally:
            # The store comes back (its connections were made for the dead address).
            if store.kind == "redis":
                if backend._client is not None:
                    await backend._client.aclose()
                backend._url, backend._client = url, real
            else:
                if backend._pool is not None:
                    backend._pool.terminate()
                backend._dsn, backend._pool = url, real
            backend.timeout = timeout


async def test_store_outage_fails_closed_for_reject_and_open_for_use_anyway(
    app: Any, fake: FakeUpstream, store: StoreView, caplog: pytest.LogCaptureFixture
) -> None:
    strict = await ready_key(app, budget_tokens=1000)
    lenient = await ready_key(app, budget_tokens=1000, usage_limit="use_anyway")
    plain = await ready_key(app)
    backend = app.state.budget_store
    async with store_hangs(app, store):
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk(app, strict["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
        waited = time.monotonic() - started
        assert caught.value.status_code == 503 and caught.value.code == "budget_store_unavailable"
        assert caught.value.response.headers["retry-after"] == "1"
        assert waited < 5.0, "the store timeout (0.5 s) bounds the wait"
        # The operator's warning says why the store failed: here, it did not answer.
        warnings = [r.getMessage() for r in caplog.records if r.name == "aigw.budgets"]
        assert any(m.startswith("budget store unavailable (TimeoutError)") for m in warnings), (
            warnings
        )
        for key in (lenient, plain):
            completion = await sdk(app, key["token"]).chat.completions.create(
                model=MODEL, messages=MESSAGES
            )
            assert completion.choices[0].message.content
        assert backend._queue, "the use_anyway request's settlement waits for the store"
        if store.kind == "redis":
            # The admin read of budget_used comes from Redis too: 503, not a made-up 0.
            read = await app.admin.get(f"/apikeys/{strict['id']}")
            assert read.status_code == 503, read.text
            assert read.headers["content-type"].startswith("application/problem+json")
            assert read.json()["code"] == "budget_store_unavailable"
    # Back: what was queued during the outage is written now, not at shutdown.
    await settled(app)
    assert not backend._queue
    [counter] = await store.counters(lenient["id"])
    assert counter["used"] > 0 and counter["reserved"] == 0
    assert (await app.admin.get(f"/apikeys/{lenient['id']}")).json()["budget_used"] == counter[
        "used"
    ]


async def test_admin_fields_validate_and_read_back(app: Any) -> None:
    key = await ready_key(app, budget_tokens=1000, budget_period="week", rpm_limit=5)
    read = (await app.admin.get(f"/apikeys/{key['id']}")).json()
    assert (read["budget_tokens"], read["budget_period"], read["rpm_limit"], read["tpm_limit"]) == (
        1000,
        "week",
        5,
        0,
    )
    assert read["budget_used"] == 0 and read["budget_resets_at"] is not None
    for bad in (
        {"budget_tokens": -1},
        {"budget_period": "year"},
        {"rpm_limit": 10_000_001},
        {"tpm_limit": "many"},
    ):
        response = await app.admin.patch(f"/apikeys/{key['id']}", json=bad)
        assert response.status_code == 422, bad
        assert response.headers["content-type"].startswith("application/problem+json")
    response = await app.admin.patch(f"/apikeys/{key['id']}", json={"budget_tokens": 0})
    assert response.status_code == 200 and response.json()["budget_resets_at"] is None
    page = (await app.admin.get("/apikeys")).json()
    assert any(item["id"] == key["id"] for item in page["items"])


async def test_keys_without_budget_never_touch_the_store(app: Any) -> None:
    key = await ready_key(app)
    await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    backend = app.state.budget_store
    assert getattr(backend, "_pool", None) is None and getattr(backend, "_client", None) is None
    assert isinstance(app.admin, httpx.AsyncClient)

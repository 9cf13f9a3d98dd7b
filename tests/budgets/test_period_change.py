"""Changing a key's budget period (or giving a key a budget) through the admin API:
the new period's current window counts what the key already spent in it, recounted
from the usage records (docs/budgets.md, "Changing the period")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import openai
import pytest

from tests.budgets.conftest import MESSAGES, StoreView, billed_prompt
from tests.fakes import FakeUpstream
from tests.proxy.conftest import MODEL, create_provider, ready_key, sdk, usage_rows, wait_for


@pytest.fixture
async def app(gateway: Any, fake: FakeUpstream, store: StoreView) -> Any:
    fake.reset()
    fake.set_scenario(tokens=3)
    app = await gateway(budget_output_slice=8, **store.settings)
    await create_provider(app.admin, fake.url)
    return app


async def spend(app: Any, key: dict[str, Any], requests: int) -> int:
    """Send *requests* completions of 3 output tokens; returns the tokens charged,
    by the fake's count, once their usage records are written."""
    client = sdk(app, key["token"])
    for _ in range(requests):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    await app.state.budget_store.flush(5.0)
    return requests * (billed_prompt() + 3)


async def change(app: Any, key: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = await app.admin.patch(f"/apikeys/{key['id']}", json=fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def cached_budget(app: Any, key: dict[str, Any], tokens: int, period: str) -> None:
    token_hash = app.state.hasher.hash(key["token"])

    async def arrived() -> bool:
        cached = app.state.keys.get(token_hash)
        budget = cached.budget if cached is not None else None
        return budget is not None and (budget.tokens, budget.period) == (tokens, period)

    await wait_for(arrived, 2.0)


async def copy_record(db: str, **changes: Any) -> None:
    """A usage record like the newest one, with *changes* (an earlier request)."""
    conn = await asyncpg.connect(db)
    try:
        row = dict(await conn.fetchrow("SELECT * FROM usage_records ORDER BY created_at DESC"))
        row.update(id=uuid.uuid4(), **changes)
        columns = ", ".join(row)
        marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        await conn.execute(f"INSERT INTO usage_records ({columns}) VALUES ({marks})", *row.values())
    finally:
        await conn.close()


async def test_a_new_period_counts_what_its_window_already_spent(
    app: Any, fake: FakeUpstream, db: str
) -> None:
    key = await ready_key(app, budget_tokens=10_000, budget_period="month")
    charged = await spend(app, key, 2)
    await usage_rows(db, expected=2)
    assert (await app.admin.get(f"/apikeys/{key['id']}")).json()["budget_used"] == charged

    read = await change(app, key, budget_period="day")
    assert read["budget_used"] == charged  # spent today, so spent this day

    # And the proxy reserves against it: room for less than one more input.
    await change(app, key, budget_tokens=charged + billed_prompt())
    await cached_budget(app, key, charged + billed_prompt(), "day")
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk(app, key["token"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert refused.value.code == "budget_exceeded"


async def test_the_recount_takes_only_the_new_window_and_only_what_was_charged(
    app: Any, fake: FakeUpstream, db: str
) -> None:
    key = await ready_key(app, budget_tokens=10_000, budget_period="day")
    charged = await spend(app, key, 1)
    await usage_rows(db, expected=1)
    # Forty days ago: in no current day, week or month, but in the total.
    await copy_record(
        db, created_at=datetime.now(UTC) - timedelta(days=40), input_tokens=1000, output_tokens=7
    )
    # Refused before going upstream: charged nothing, whatever it counted.
    await copy_record(db, outcome="rejected", input_tokens=500, output_tokens=0)

    assert (await change(app, key, budget_period="total"))["budget_used"] == charged + 1007
    assert (await change(app, key, budget_period="week"))["budget_used"] == charged
    assert (await change(app, key, budget_period="day"))["budget_used"] == charged


async def test_a_budget_set_on_a_key_without_one_counts_todays_spending(
    app: Any, fake: FakeUpstream, db: str
) -> None:
    key = await ready_key(app)
    charged = await spend(app, key, 2)
    await usage_rows(db, expected=2)
    read = await change(app, key, budget_tokens=1000, budget_period="day")
    assert read["budget_used"] == charged


async def test_a_counter_ahead_of_the_records_is_not_lowered(
    app: Any, fake: FakeUpstream, db: str, store: StoreView
) -> None:
    key = await ready_key(app, budget_tokens=10_000, budget_period="week")
    charged = await spend(app, key, 1)
    await usage_rows(db, expected=1)
    # The week's counter holds more than the records show (say, requests settled
    # whose records are not written yet). Weeks start on Monday, 00:00 UTC.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - timedelta(days=today.weekday())
    await store.add_used(key["id"], monday, 5000)
    await change(app, key, budget_period="day")
    assert (await change(app, key, budget_period="week"))["budget_used"] == charged + 5000

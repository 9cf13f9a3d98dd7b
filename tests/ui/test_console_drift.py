"""The key page shows the gateway's token counts next to the upstream's (issue 11, item 6)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
from playwright.sync_api import expect

from aigw.db.engine import libpq_url
from tests.ui.conftest import Console


def _insert(
    database_url: str, key: dict[str, object], rows: list[tuple[int, int, int, int]]
) -> None:
    """(input, upstream input, output, upstream output) per completed request."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    values = [
        (
            uuid.uuid4(), now, "req_drift", uuid.UUID(str(key["id"])), key["alias"],
            key["provider"], key["model"], "completed", None, 200, inp, out, up_in, up_out,
            0, 0, "reject", False, False, False, 500.0, 100.0,
        )
        for inp, up_in, out, up_out in rows
    ]  # fmt: skip

    async def insert() -> None:
        conn = await asyncpg.connect(libpq_url(database_url))
        try:
            await conn.executemany(
                """INSERT INTO usage_records (id, created_at, request_id, api_key_id, alias,
                provider, model, outcome, error_code, status_code, input_tokens, output_tokens,
                upstream_input_tokens, upstream_output_tokens, input_limit, output_limit,
                usage_limit, input_limit_exceeded, output_limit_exceeded, stream, latency_ms,
                ttfb_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                $15, $16, $17, $18, $19, $20, $21, $22)""",
                values,
            )
        finally:
            await conn.close()

    # Playwright's sync API runs a loop in this thread: insert from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, insert()).result()


@pytest.mark.browser
def test_key_page_shows_counting_drift(console: Console) -> None:
    console.add_provider()
    key = console.add_key("drift-bot", status="enabled")
    # Input: gateway 900 vs upstream 1,000 (-10 %); output agrees.
    _insert(console.gateway.env["AIGW_DATABASE_URL"], key, [(400, 450, 50, 50), (500, 550, 70, 70)])
    console.sign_in(f"#/keys/{key['id']}")
    drift = console.page.get_by_test_id("drift")
    expect(drift).to_be_visible()
    row = drift.locator("tr[data-model='gpt-4o-mini']")
    expect(row).to_contain_text("900 / 1,000")
    expect(row).to_contain_text("\u2212100 (\u221210.0 %)")
    expect(row.locator(".badge--warn")).to_have_count(1)  # input only
    expect(row).to_contain_text("120 / 120")
    console.shot("drift")

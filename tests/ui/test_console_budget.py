"""The console's key form and key page with a budget and rates (issue 14), in a
real browser against a real gateway and the fake upstream.

The budget used shown on the page is what the fake upstream billed for the one
request made with the key (its own rules), and the period end is the next
Monday 00:00 UTC worked out here from the clock, never the gateway's figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import openai
import pytest
from playwright.sync_api import expect

from tests.fakes import FakeUpstream, start_fake_upstream
from tests.ui.conftest import Console

MODEL = "gpt-4o-mini"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with start_fake_upstream() as server:
        yield server


def _next_monday(now: datetime) -> datetime:
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    return midnight + timedelta(days=7 - now.weekday())


def _en_us(when: datetime) -> str:
    """Intl's en-US medium date, short time, for a UTC midnight (spaces normalised)."""
    return f"{when:%b} {when.day}, {when.year}, 12:00 AM"


def _billed_request(console: Console, token: str) -> int:
    client = openai.OpenAI(
        base_url=f"{console.gateway.url}/v1", api_key=token, max_retries=0, timeout=30
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "go"}]
            )
            break
        except openai.AuthenticationError:  # the key reaches the proxy within a second
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert reply.usage is not None
    return reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_key_form_sets_a_budget_and_the_key_page_shows_it(
    console: Console, fake: FakeUpstream
) -> None:
    fake.set_scenario(tokens=12)
    page = console.page
    console.add_provider(name="fake", models=(MODEL,), base_url=fake.url)
    console.sign_in("#/keys/new")
    expect(page.get_by_role("heading", name="Create AI API key")).to_be_visible()

    section = page.get_by_test_id("budget-section")
    budget = page.get_by_role("spinbutton", name="Token Budget")
    period = page.get_by_role("combobox", name="Budget Period")
    rpm = page.get_by_role("spinbutton", name="Requests per Minute")
    tpm = page.get_by_role("spinbutton", name="Tokens per Minute")
    expect(section.get_by_role("heading", name="Budget and rates")).to_be_visible()
    for control in (budget, rpm, tpm):
        expect(control).to_have_value("0")
    expect(period).to_have_value("month")
    expect(period.locator("option")).to_have_text(
        ["Day", "Week (from Monday)", "Month", "Total (never resets)"]
    )
    expect(page.locator("#f-budget-tokens-hint")).to_contain_text("0 = no budget")

    page.get_by_role("textbox", name="API Key Alias").fill("budgeted")
    page.get_by_role("combobox", name="Provider/Model").select_option(label=f"fake / {MODEL}")
    page.locator("#f-key-code").fill("sk-upstream-0123456789abcdef")
    page.get_by_role("spinbutton", name="Input Limit").fill("0")
    page.get_by_role("radio", name="Enable").check()

    # Checked in the page, like the other number fields: nothing is sent.
    budget.fill("-1")
    rpm.fill("1.5")
    tpm.fill(str(10**12 + 1))
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#f-budget-tokens-error")).to_contain_text("greater than or equal to 0")
    expect(page.locator("#f-rpm-limit-error")).to_contain_text("whole number")
    expect(page.locator("#f-tpm-limit-error")).to_contain_text(f"less than or equal to {10**12}")
    expect(budget).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("form-errors")).to_contain_text("There are 3 problems")
    expect(budget).to_be_focused()
    assert console.api.get("/apikeys").json()["total"] == 0
    console.shot("budget-validation-errors")

    budget.fill("5000")
    expect(page.locator("#f-budget-tokens-error")).to_be_hidden()  # editing clears it
    period.select_option("week")
    rpm.fill("30")
    tpm.fill("9000")
    before = datetime.now(UTC)
    page.get_by_role("button", name="Create", exact=True).click()
    dialog = page.get_by_role("dialog", name="Your client token")
    token = page.get_by_test_id("client-token").input_value()
    dialog.get_by_role("button", name="I've stored it").click()

    expect(page.get_by_role("heading", name="budgeted", level=1)).to_be_visible()
    (created,) = console.api.get("/apikeys", params={"q": "budgeted"}).json()["items"]
    assert (created["budget_tokens"], created["budget_period"]) == (5000, "week")
    assert (created["rpm_limit"], created["tpm_limit"]) == (30, 9000)

    expect(page.get_by_test_id("key-budget")).to_have_text("0 of 5,000 tokens used")
    expect(page.get_by_test_id("key-budget-period")).to_have_text("Week")
    resets = page.get_by_test_id("key-budget-resets")
    ends = {_en_us(_next_monday(before)), _en_us(_next_monday(datetime.now(UTC)))}
    shown = " ".join(resets.inner_text().replace("\u202f", " ").split())
    assert shown.startswith("Resets ") and any(end in shown for end in ends), shown
    expect(page.get_by_test_id("key-rpm")).to_have_text("30 requests per minute")
    expect(page.get_by_test_id("key-tpm")).to_have_text("9,000 tokens per minute")

    # A request through the proxy: the page shows what the upstream billed.
    billed = _billed_request(console, token)
    deadline = time.monotonic() + 10
    while console.api.get(f"/apikeys/{created['id']}").json()["budget_used"] != billed:
        assert time.monotonic() < deadline, "the request was never charged"
        time.sleep(0.1)  # settlements are written in batches
    page.reload()
    expect(page.get_by_test_id("key-budget")).to_have_text(f"{billed} of 5,000 tokens used")
    meter = page.get_by_role("meter", name="Budget used")
    expect(meter).to_have_attribute("value", str(billed))
    expect(meter).to_have_attribute("max", "5000")
    console.shot("budget-on-key-page")

    # Edit: a blank budget is asked for in the page; "total" never resets.
    page.get_by_role("link", name="Edit").click()
    expect(budget).to_have_value("5000")
    expect(period).to_have_value("week")
    budget.fill("")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#f-budget-tokens-error")).to_contain_text("required")
    budget.fill("8000")
    rpm.fill("0")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", name="budgeted", level=1)).to_be_visible()
    expect(page.get_by_test_id("key-budget")).to_have_text(f"{billed} of 8,000 tokens used")
    expect(page.get_by_test_id("key-rpm")).to_have_text("No limit")
    expect(page.get_by_test_id("key-tpm")).to_have_text("9,000 tokens per minute")
    saved = console.api.get(f"/apikeys/{created['id']}").json()
    assert (saved["budget_tokens"], saved["budget_period"], saved["rpm_limit"]) == (
        8000,
        "week",
        0,
    )
    assert saved["tpm_limit"] == 9000 and saved["version"] == created["version"] + 1

    page.get_by_role("link", name="Edit").click()
    period.select_option("total")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_test_id("key-budget-period")).to_have_text("Total")
    expect(page.get_by_test_id("key-props")).to_contain_text("Never resets.")
    saved = console.api.get(f"/apikeys/{created['id']}").json()
    assert (saved["budget_period"], saved["budget_resets_at"]) == ("total", None)
    # a "total" budget counts in a period of its own: the page shows what the API has
    expect(page.get_by_test_id("key-budget")).to_have_text(
        f"{saved['budget_used']:,} of 8,000 tokens used"
    )

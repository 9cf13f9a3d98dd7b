"""The operator console at /ui, in a real browser against a real gateway.

The seed workflows end to end: sign in, create a key through the form (the
API's validation errors shown next to their fields), the client token shown
once with a copy button, search, view, update (and a stale update), rotate,
delete behind "Confirm Delete?"; providers and their 409s; the layout at
phone width. Screenshots land in test-artifacts/ui/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.sync_api import expect

from aigw.db.engine import libpq_url
from tests.ui.conftest import DESKTOP, DOCS_IMG, PHONE, Console

STATIC_FILES = ("index.html", "css/app.css", "js/app.js", "js/api.js", "js/ui.js")


# --------------------------------------------------------------------------- #
# Served files and headers (no browser needed)
# --------------------------------------------------------------------------- #


async def test_console_is_served_with_strict_security_headers(anon: httpx.AsyncClient) -> None:
    for path in ("/ui", "/ui/", "/ui/index.html"):
        response = await anon.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/js/app.js">' in response.text
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"

    script = await anon.get("/ui/js/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"

    missing = await anon.get("/ui/js/nope.js")
    assert missing.status_code == 404
    assert "default-src 'self'" in missing.headers["content-security-policy"]
    assert (await anon.post("/ui/")).status_code == 405

    schema = (await anon.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if path.startswith("/ui")]


async def test_console_sources_are_self_contained(anon: httpx.AsyncClient) -> None:
    """No inline script, nothing from another origin, no HTML built from strings."""
    index = (await anon.get("/ui/")).text
    assert re.search(r"<script(?![^>]*\bsrc=)", index) is None, "inline <script>"
    assert " style=" not in index
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", index)
    for name in STATIC_FILES[1:]:
        text = (await anon.get(f"/ui/{name}")).text
        assert not re.search(r"""@import\s+url\(["']?https?:|from\s+["']https?:""", text), name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
        assert "localStorage" not in text, name


# --------------------------------------------------------------------------- #
# Browser
# --------------------------------------------------------------------------- #


def _run(coro: Any) -> Any:
    """Run a coroutine on a fresh loop in another thread (Playwright owns this one)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _seed_usage(database_url: str, key: dict[str, Any], days: int = 14, seed: int = 7) -> int:
    """Write usage records for a key straight into the database, as the proxy would."""
    import random

    rng = random.Random(seed)
    outcomes = ["completed", "truncated", "rejected", "upstream_error", "client_disconnected"]
    now = dt.datetime.now(dt.UTC)
    rows = []
    for back in range(days):
        day = (now - dt.timedelta(days=back)).replace(hour=0, minute=30)
        for _ in range(rng.randint(6, 34) if back % 7 not in (5, 6) else rng.randint(1, 8)):
            outcome = rng.choices(outcomes, [86, 5, 6, 2, 1])[0]
            at = min(day + dt.timedelta(minutes=rng.randint(0, 1380)), now)
            rows.append(
                (
                    uuid.uuid4(), at, "req_seeded", uuid.UUID(key["id"]), key["alias"],
                    key["provider"], key["model"], outcome, None, 200,
                    rng.randint(80, 2400), rng.randint(20, 700), None, None,
                    key["input_limit"], key["output_limit"], key["usage_limit"],
                    outcome == "rejected", outcome == "truncated", False,
                    rng.uniform(300, 2500), rng.uniform(60, 400),
                )
            )  # fmt: skip

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
                rows,
            )
        finally:
            await conn.close()

    _run(insert())
    return len(rows)


def _usage_endpoint_exists(console: Console, key_id: str) -> bool:
    return console.api.get(f"/apikeys/{key_id}/usage").status_code == 200


def _no_horizontal_scroll(console: Console) -> None:
    width = console.page.evaluate("document.documentElement.scrollWidth")
    assert width <= console.page.viewport_size["width"], f"page scrolls sideways: {width}px"


@pytest.mark.browser
def test_key_lifecycle_create_search_view_update_rotate_delete(console: Console) -> None:
    page = console.page
    console.add_provider()
    console.sign_in()

    # Signed in: the token is in sessionStorage, never in the URL.
    assert console.gateway.admin_token not in page.url
    assert page.evaluate("sessionStorage.getItem('aigw.adminToken')") == console.gateway.admin_token
    expect(page.get_by_role("heading", name="AI API Keys", level=1)).to_be_visible()
    expect(page.get_by_text("No AI API keys yet")).to_be_visible()

    # ---- Create, first with a blank alias and a negative input limit ----
    page.get_by_role("link", name="Create").first.click()
    expect(page.get_by_role("heading", name="Create AI API key")).to_be_visible()
    expect(page.get_by_role("radio", name="Disable")).to_be_checked()
    expect(page.get_by_role("radio", name="Reject")).to_be_checked()
    expect(page.get_by_role("spinbutton", name="Output Limit")).to_have_value("0")
    expect(page.locator("#f-input-limit-hint")).to_contain_text("0 = unlimited")
    expect(page.locator("#f-output-limit-hint")).to_contain_text("0 = unlimited")
    options = page.get_by_role("combobox", name="Provider/Model").locator("option")
    expect(options).to_have_text(
        ["Choose a provider and model\u2026", "openai-main / gpt-4o-mini", "openai-main / gpt-4o"]
    )
    for label in ("API Key Alias", "Provider/Model", "Status", "API Key Code", "Input Limit"):
        marker = page.locator(f"label:has-text('{label}') .req, legend:has-text('{label}') .req")
        expect(marker.first).to_have_text("*")
    expect(page.locator("#f-key-code")).to_have_attribute("type", "password")

    page.get_by_role("combobox", name="Provider/Model").select_option(
        label="openai-main / gpt-4o-mini"
    )
    page.locator("#f-key-code").fill("sk-live-abcdef0123456789XYZ")
    page.get_by_role("spinbutton", name="Input Limit").fill("-5")
    page.get_by_role("button", name="Create", exact=True).click()

    alias_error = page.locator("#f-alias-error")
    limit_error = page.locator("#f-input-limit-error")
    expect(alias_error).to_be_visible()
    expect(alias_error).to_contain_text("required")
    expect(limit_error).to_be_visible()
    expect(limit_error).to_contain_text("greater than or equal to 0")
    alias_input = page.get_by_role("textbox", name="API Key Alias")
    expect(alias_input).to_have_attribute("aria-invalid", "true")
    expect(alias_input).to_have_attribute("aria-describedby", re.compile(r"\bf-alias-error\b"))
    expect(page.locator("#f-input-limit")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("form-errors")).to_contain_text("There are 2 problems")
    expect(page.locator("#f-key-code-error")).to_be_hidden()
    expect(alias_input).to_be_focused()
    console.shot("create-validation-errors")

    alias_input.fill("search-team")
    expect(alias_error).to_be_hidden()  # editing a field clears its error
    page.get_by_role("spinbutton", name="Input Limit").fill("8000")
    page.get_by_role("spinbutton", name="Output Limit").fill("1024")
    page.get_by_role("button", name="Create", exact=True).click()

    # ---- The client token, once, with a copy button ----
    dialog = page.get_by_role("dialog", name="Your client token")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("you will not see it again")
    token = page.get_by_test_id("client-token").input_value()
    assert token.startswith("aigw-") and len(token) > 30
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == token
    console.shot("token-shown-once", full_page=False)
    dialog.get_by_role("button", name="I've stored it").click()
    expect(dialog).to_be_hidden()

    # The key exists as typed, disabled by default, and the token works for it.
    expect(page.get_by_role("heading", name="search-team", level=1)).to_be_visible()
    (created,) = console.api.get("/apikeys", params={"q": "search-team"}).json()["items"]
    assert created["status"] == "disabled"
    assert (created["input_limit"], created["output_limit"], created["usage_limit"]) == (
        8000,
        1024,
        "reject",
    )
    assert token.startswith(created["token_prefix"])
    # Shown once means gone from the page and from storage afterwards.
    assert token not in page.content()
    assert token not in page.evaluate(
        "JSON.stringify(sessionStorage) + JSON.stringify(localStorage)"
    )

    # ---- Details ----
    props = page.get_by_test_id("key-props")
    expect(page.get_by_test_id("key-code-masked")).to_have_text(created["key_code_masked"])
    assert "abcdef0123456789" not in page.content()
    expect(props).to_contain_text(f"{created['token_prefix']}…")
    expect(props).to_contain_text("8,000 tokens")
    expect(props).to_contain_text("1,024 tokens")
    expect(props).to_contain_text("Reject")
    expect(page.get_by_test_id("key-version")).to_have_text("1")
    expect(page.get_by_test_id("disabled-note")).to_contain_text("This key is disabled")
    if _usage_endpoint_exists(console, created["id"]):
        expect(page.get_by_test_id("usage")).to_contain_text("No usage yet")
        seeded = _seed_usage(console.gateway.env["AIGW_DATABASE_URL"], created)
        page.reload()
        expect(page.get_by_test_id("usage-chart")).to_be_visible()
        expect(page.get_by_test_id("usage")).to_contain_text(f"{seeded:,}")
        expect(page.locator("[data-outcome=completed]")).to_contain_text("Completed")
    else:
        expect(page.get_by_test_id("usage")).to_contain_text("No usage yet")
    console.shot("details")

    # ---- Search finds it among others ----
    console.add_key("billing-bot")
    console.add_key("research-lab", status="enabled")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="AI API Keys").click()
    expect(page.get_by_test_id("result-count")).to_have_text("Showing 1\u20133 of 3 keys")
    page.get_by_role("searchbox", name="Search by alias").fill("SEARCH-T")
    expect(page.get_by_test_id("result-count")).to_have_text("Showing 1\u20131 of 1 key")
    rows = page.locator("#key-results tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("search-team")
    assert "q=SEARCH-T" in page.url and console.gateway.admin_token not in page.url
    page.get_by_role("searchbox", name="Search by alias").fill("")
    page.get_by_role("combobox", name="Status").select_option("enabled")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("research-lab")
    page.get_by_role("combobox", name="Status").select_option("")
    page.get_by_role("combobox", name="Sort by").select_option("alias")
    expect(rows.first).to_contain_text("billing-bot")
    expect(rows).to_have_count(3)
    console.shot("list")
    page.get_by_role("link", name="search-team", exact=True).click()

    # ---- Update: enable it and raise the input limit ----
    expect(page.get_by_role("heading", name="search-team", level=1)).to_be_visible()
    page.get_by_role("link", name="Edit", exact=True).click()
    expect(page.get_by_role("heading", name="Edit search-team")).to_be_visible()
    expect(page.locator("#f-key-code")).to_have_value("")
    page.get_by_role("radio", name="Enable").check()
    page.get_by_role("spinbutton", name="Input Limit").fill("16000")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", name="search-team", level=1)).to_be_visible()
    expect(props).to_contain_text("16,000 tokens")
    expect(page.locator(".title-row .badge")).to_have_text("Enabled")
    expect(page.get_by_test_id("key-version")).to_have_text("2")
    expect(page.get_by_test_id("disabled-note")).to_have_count(0)
    updated = console.api.get(f"/apikeys/{created['id']}").json()
    assert (updated["status"], updated["input_limit"]) == ("enabled", 16000)
    assert updated["key_code_masked"] == created["key_code_masked"]  # blank code kept it

    # ---- A stale update: someone else saved in between ----
    page.get_by_role("link", name="Edit", exact=True).click()
    page.get_by_role("spinbutton", name="Output Limit").fill("2048")
    behind_its_back = console.api.patch(f"/apikeys/{created['id']}", json={"output_limit": 512})
    assert behind_its_back.status_code == 200
    page.get_by_role("button", name="Save changes").click()
    stale = page.get_by_test_id("stale")
    expect(stale).to_contain_text("changed by someone else — reload")
    console.shot("stale-update", full_page=False)
    stale.get_by_role("button", name="Reload").click()
    expect(page.get_by_role("spinbutton", name="Output Limit")).to_have_value("512")
    page.get_by_role("link", name="Cancel").click()

    # ---- Rotate the client token ----
    page.get_by_role("button", name="Rotate token").click()
    confirm = page.get_by_role("alertdialog", name="Rotate the client token?")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Rotate token").click()
    rotated_dialog = page.get_by_role("dialog", name="New client token")
    expect(rotated_dialog).to_contain_text("you will not see it again")
    new_token = page.get_by_test_id("client-token").input_value()
    assert new_token.startswith("aigw-") and new_token != token
    rotated_dialog.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == new_token
    rotated_dialog.get_by_role("button", name="I've stored it").click()
    rotated = console.api.get(f"/apikeys/{created['id']}").json()
    assert new_token.startswith(rotated["token_prefix"])
    expect(props).to_contain_text(f"{rotated['token_prefix']}…")

    # ---- The quick status toggle on the details page ----
    page.get_by_test_id("toggle-status").click()
    expect(page.locator(".title-row .badge")).to_have_text("Disabled")
    expect(page.get_by_test_id("disabled-note")).to_be_visible()
    assert console.api.get(f"/apikeys/{created['id']}").json()["status"] == "disabled"

    # ---- Audit trail ----
    page.get_by_role("link", name="Activity").click()
    timeline = page.locator(".timeline")
    expect(timeline).to_contain_text("Client token rotated")
    expect(timeline).to_contain_text("Updated")
    expect(timeline).to_contain_text("Created")
    console.shot("activity")
    page.get_by_role("link", name="Overview").click()

    # ---- Delete behind "Confirm Delete?": Esc cancels, Tab stays inside ----
    page.get_by_role("button", name="Delete", exact=True).click()
    confirm_delete = page.get_by_role("alertdialog", name="Confirm Delete?")
    expect(confirm_delete).to_be_visible()
    expect(confirm_delete.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(confirm_delete).to_be_hidden()
    assert console.api.get(f"/apikeys/{created['id']}").status_code == 200

    page.get_by_role("button", name="Delete", exact=True).click()
    expect(confirm_delete).to_be_visible()
    for _ in range(5):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('dialog') !== null")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.closest('dialog') !== null")
    console.shot("confirm-delete", full_page=False)
    confirm_delete.get_by_role("button", name="Delete", exact=True).click()

    expect(page).to_have_url(re.compile(r"#/keys$"))
    expect(page.locator("#toasts")).to_contain_text("Deleted “search-team”")
    expect(page.locator("#key-results")).not_to_contain_text("search-team")
    expect(page.get_by_test_id("result-count")).to_have_text("Showing 1\u20132 of 2 keys")
    assert console.api.get(f"/apikeys/{created['id']}").status_code == 404
    page.get_by_role("searchbox", name="Search by alias").fill("search-team")
    expect(page.get_by_text("No keys match")).to_be_visible()


@pytest.mark.browser
def test_providers_page_creates_edits_and_refuses_to_delete_what_is_in_use(
    console: Console,
) -> None:
    page = console.page
    console.sign_in("#/providers")
    expect(page.get_by_role("heading", name="Providers", level=1)).to_be_visible()
    expect(page.get_by_text("No providers yet")).to_be_visible()

    # ---- Add, first with nothing filled in ----
    page.get_by_role("button", name="Add provider").first.click()
    dialog = page.get_by_role("dialog", name="Add a provider")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Add provider").click()
    expect(page.locator("#p-name-error")).to_be_visible()
    expect(page.locator("#p-base-url-error")).to_be_visible()
    expect(dialog.locator(".model-row .field-error")).to_be_visible()
    expect(page.get_by_role("textbox", name="Name", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )

    page.get_by_role("textbox", name="Name", exact=True).fill("openai-main")
    page.get_by_role("textbox", name="Base URL").fill("https://api.openai.com/v1")
    page.get_by_role("textbox", name="Model 1 name").fill("gpt-4o-mini")
    dialog.get_by_role("button", name="Add model").click()
    second = page.get_by_role("textbox", name="Model 2 name")
    expect(second).to_be_focused()
    second.fill("gpt-4")
    page.get_by_role("combobox", name="Model 2 token encoding").select_option("cl100k_base")
    dialog.get_by_role("button", name="Add provider").click()
    expect(dialog).to_be_hidden()

    card = page.locator("[data-provider='openai-main']")
    expect(card).to_contain_text("https://api.openai.com/v1")
    expect(card).to_contain_text("gpt-4o-mini")
    expect(card).to_contain_text("cl100k_base")
    provider = console.api.get("/providers").json()["items"][0]
    assert [(m["name"], m["encoding"]) for m in provider["models"]] == [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
    ]

    # ---- A model in use cannot be removed: 409 shown in the dialog ----
    console.add_key("in-use", model="gpt-4o-mini")
    card.get_by_role("button", name="Edit openai-main").click()
    edit = page.get_by_role("dialog", name="Edit openai-main")
    edit.get_by_role("button", name="Remove model gpt-4o-mini").click()
    edit.get_by_role("button", name="Save changes").click()
    expect(edit.get_by_test_id("form-errors")).to_contain_text("still used by an AI API key")
    expect(page.locator("#p-models-error")).to_be_visible()
    console.shot("model-in-use", full_page=False)
    page.keyboard.press("Escape")
    expect(edit).to_be_hidden()

    # ---- Adding a model works ----
    card.get_by_role("button", name="Edit openai-main").click()
    edit.get_by_role("button", name="Add model").click()
    page.get_by_role("textbox", name="Model 3 name").fill("gpt-4o")
    edit.get_by_role("button", name="Save changes").click()
    expect(edit).to_be_hidden()
    expect(card.locator(".chip")).to_have_count(3)

    # ---- A provider in use cannot be deleted: 409 explained, with a way to its keys ----
    card.get_by_role("button", name="Delete openai-main").click()
    confirm = page.get_by_role("alertdialog", name="Delete provider?")
    confirm.get_by_role("button", name="Delete provider").click()
    expect(confirm.locator(".callout--danger")).to_contain_text("still use this provider")
    expect(confirm.get_by_role("button", name="Delete provider")).to_be_hidden()
    expect(confirm.get_by_role("button", name="Close")).to_be_focused()
    console.shot("provider-in-use", full_page=False)
    confirm.get_by_role("link", name="See its keys").click()
    expect(confirm).to_be_hidden()
    expect(page).to_have_url(re.compile(r"#/keys\?provider=openai-main$"))
    expect(page.locator("#key-results tbody tr")).to_have_count(1)
    expect(page.get_by_role("combobox", name="Provider/Model")).to_have_value(
        '["openai-main",null]'
    )

    # ---- An unused provider goes after confirming ----
    console.add_provider("scratch", models=("llama3",))
    page.get_by_role("link", name="Providers").click()
    scratch = page.locator("[data-provider='scratch']")
    scratch.get_by_role("button", name="Delete scratch").click()
    page.get_by_role("alertdialog", name="Delete provider?").get_by_role(
        "button", name="Delete provider"
    ).click()
    expect(scratch).to_have_count(0)
    expect(page.locator("#toasts")).to_contain_text("Deleted provider “scratch”")
    assert [p["name"] for p in console.api.get("/providers").json()["items"]] == ["openai-main"]


@pytest.mark.browser
def test_sign_in_keeps_the_token_in_session_storage_only(console: Console) -> None:
    page = console.page
    console.open()
    token_field = page.get_by_label("Admin token")
    expect(token_field).to_have_attribute("type", "password")
    token_field.fill("not-the-admin-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#admin-token-error")).to_contain_text("not accepted")
    assert page.evaluate("sessionStorage.length") == 0
    console.shot("sign-in-refused")

    token_field.fill(console.gateway.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="AI API Keys", level=1)).to_be_visible()
    assert console.gateway.admin_token not in page.url

    page.reload()  # same tab: still signed in
    expect(page.get_by_role("heading", name="AI API Keys", level=1)).to_be_visible()

    # A token the gateway stops accepting sends the operator back to sign in.
    expect(page.locator("#main")).not_to_have_attribute("aria-busy", "true")
    page.evaluate("sessionStorage.setItem('aigw.adminToken', 'rotated-away')")
    page.get_by_role("link", name="Providers").click()
    expect(page.get_by_text("did not accept the admin token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0

    console.sign_in()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0

    # Keyboard only: the token field has focus, Enter submits.
    page.keyboard.type(console.gateway.admin_token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="AI API Keys", level=1)).to_be_visible()


def _check_filters_sort_and_paging(console: Console, keys: list[dict[str, Any]]) -> None:
    for index in range(15):
        console.add_key(f"bulk-{index:02d}", model="gpt-4o-mini")
    page = console.page
    page.goto(f"{console.url}#/keys")
    rows = page.locator("#key-results tbody tr")
    count = page.get_by_test_id("result-count")

    # 21 keys, 20 a page: the cursor leads to the next page and back.
    expect(count).to_have_text("Showing 1\u201320 of 21 keys")
    expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
    page.get_by_role("button", name="Next page").click()
    expect(count).to_have_text("Showing 21\u201321 of 21 keys")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(keys[0]["alias"])  # the oldest, newest-first order
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(count).to_have_text("Showing 1\u201320 of 21 keys")

    # Filters narrow the list and live in the URL (never the token).
    page.get_by_role("combobox", name="Usage limit").select_option("use_anyway")
    expect(rows).to_have_count(2)
    expect(page.locator("#key-results")).to_contain_text("data-science")
    expect(page.locator("#key-results")).to_contain_text("nightly-batch")
    page.get_by_role("combobox", name="Usage limit").select_option("")
    pm = page.get_by_role("combobox", name="Provider/Model")
    pm.select_option(label="anthropic \u2014 all models")
    expect(rows).to_have_count(2)
    pm.select_option(label="anthropic / claude-sonnet-4-5")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("code-review")
    page.get_by_role("combobox", name="Status").select_option("disabled")
    expect(page.get_by_text("No keys match")).to_be_visible()
    assert "status=disabled" in page.url and "model=claude-sonnet-4-5" in page.url
    page.reload()  # the filters survive a reload
    expect(page.get_by_text("No keys match")).to_be_visible()
    expect(page.get_by_role("combobox", name="Status")).to_have_value("disabled")
    page.get_by_role("button", name="Clear filters").first.click()
    expect(count).to_have_text("Showing 1\u201320 of 21 keys")

    page.get_by_role("combobox", name="Sort by").select_option("-alias")
    expect(rows.first).to_contain_text("support-bot")
    page.get_by_role("searchbox", name="Search by alias").fill("bulk-1")
    expect(count).to_have_text("Showing 1\u20135 of 5 keys")
    expect(rows.first).to_contain_text("bulk-14")


def _seed_showcase(console: Console) -> list[dict[str, Any]]:
    console.add_provider("openai-main", models=("gpt-4o-mini", "gpt-4o", "gpt-4.1"))
    console.add_provider(
        "anthropic", models=("claude-sonnet-4-5", "claude-haiku-4-5"), kind="anthropic",
        base_url="https://api.anthropic.com",
    )  # fmt: skip
    console.add_provider(
        "vllm-local", models=("Qwen/Qwen2.5-7B-Instruct",), base_url="http://127.0.0.1:8000/v1"
    )
    specs = [
        ("marketing-copy", "openai-main", "gpt-4o-mini", "disabled", 4000, 800, "reject"),
        (
            "nightly-batch",
            "vllm-local",
            "Qwen/Qwen2.5-7B-Instruct",
            "enabled",
            32000,
            4096,
            "use_anyway",
        ),
        ("data-science", "openai-main", "gpt-4.1", "enabled", 0, 0, "use_anyway"),
        ("support-bot", "anthropic", "claude-haiku-4-5", "enabled", 16000, 2048, "reject"),
        ("code-review", "anthropic", "claude-sonnet-4-5", "enabled", 120000, 8192, "reject"),
        ("search-team", "openai-main", "gpt-4o", "enabled", 8000, 1024, "reject"),
    ]
    return [
        console.add_key(
            alias, provider=p, model=m, status=s, input_limit=i, output_limit=o, usage_limit=u
        )
        for alias, p, m, s, i, o, u in specs
    ]


def _publish(source: Any, name: str) -> None:
    """Copy a screenshot to docs/img when asked (AIGW_UPDATE_SCREENSHOTS=1) or missing."""
    target = DOCS_IMG / name
    if os.environ.get("AIGW_UPDATE_SCREENSHOTS") == "1" or not target.exists():
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


@pytest.mark.browser
def test_key_list_with_real_data_at_desktop_and_phone_width(console_factory: Any) -> None:
    """README screenshots, the phone layout, then filters, sort and cursor paging."""
    desktop: Console = console_factory(DESKTOP)
    keys = _seed_showcase(desktop)
    has_usage = _usage_endpoint_exists(desktop, keys[-1]["id"])
    if has_usage:
        _seed_usage(desktop.gateway.env["AIGW_DATABASE_URL"], keys[-1])

    # Desktop: the screenshots the README shows.
    desktop.sign_in()
    expect(desktop.page.locator("#key-results tbody tr")).to_have_count(6)
    desktop.page.mouse.move(0, 0)
    _publish(desktop.shot("keys", full_page=False), "console-keys.png")

    page = desktop.page
    page.get_by_role("link", name="Create").first.click()
    page.get_by_role("textbox", name="API Key Alias").fill("checkout-service")
    page.get_by_role("combobox", name="Provider/Model").select_option(
        label="openai-main / gpt-4o-mini"
    )
    page.locator("#f-key-code").fill("sk-proj-4f9a0c2e7b1d")
    page.get_by_role("spinbutton", name="Input Limit").fill("8000")
    page.get_by_role("spinbutton", name="Output Limit").fill("1024")
    page.get_by_role("textbox", name="API Key Alias").focus()
    _publish(desktop.shot("create", full_page=True), "console-create.png")
    _no_horizontal_scroll(desktop)

    page.goto(f"{desktop.url}#/keys/{keys[-1]['id']}")
    expect(page.get_by_role("heading", name="search-team", level=1)).to_be_visible()
    if has_usage:
        expect(page.get_by_test_id("usage-chart")).to_be_visible()
    desktop.shot("details")
    page.goto(f"{desktop.url}#/providers")
    expect(page.locator("[data-provider]")).to_have_count(3)
    desktop.shot("providers")

    # Phone: same gateway, 375px wide; nothing scrolls sideways.
    phone: Console = console_factory(PHONE, gateway=desktop.gateway)
    phone.sign_in()
    page = phone.page
    expect(page.locator("#key-results tbody tr")).to_have_count(6)
    expect(page.locator("#key-results thead")).to_be_hidden()  # rows become cards
    _no_horizontal_scroll(phone)
    phone.shot("keys")

    page.get_by_role("link", name="Create").first.click()
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#f-alias-error")).to_be_visible()
    _no_horizontal_scroll(phone)
    phone.shot("create-errors")

    page.goto(f"{phone.url}#/keys/{keys[-1]['id']}")
    expect(page.get_by_role("heading", name="search-team", level=1)).to_be_visible()
    if has_usage:
        expect(page.get_by_test_id("usage-chart")).to_be_visible()
    _no_horizontal_scroll(phone)
    phone.shot("details")

    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_role("alertdialog", name="Confirm Delete?")).to_be_visible()
    _no_horizontal_scroll(phone)
    phone.shot("confirm-delete", full_page=False)
    page.keyboard.press("Escape")

    page.goto(f"{phone.url}#/providers")
    expect(page.locator("[data-provider]")).to_have_count(3)
    _no_horizontal_scroll(phone)
    phone.shot("providers")

    # Back on the desktop page: filters, sort and paging over the same data.
    _check_filters_sort_and_paging(desktop, keys)


@pytest.mark.browser
def test_provider_form_shows_only_the_fields_a_kind_needs(console: Console) -> None:
    page = console.page
    console.sign_in("#/providers")
    page.get_by_role("button", name="Add provider").first.click()
    dialog = page.get_by_role("dialog", name="Add a provider")
    kind = page.get_by_role("combobox", name="Kind")
    api_version = page.get_by_role("textbox", name="API version")
    counting = page.get_by_role("combobox", name="Input limits counted by")
    margin = page.get_by_role("spinbutton", name="Fallback margin (%)")
    deployment = page.get_by_role("textbox", name="Model 1 deployment")
    # openai: none of the kind-specific fields.
    for hidden in (api_version, counting, margin, deployment):
        expect(hidden).to_be_hidden()
    # azure_openai: api-version and a deployment per model.
    kind.select_option("azure_openai")
    expect(api_version).to_be_visible()
    expect(deployment).to_be_visible()
    expect(counting).to_be_hidden()
    page.get_by_role("textbox", name="Name", exact=True).fill("azure")
    page.get_by_role("textbox", name="Base URL").fill("https://contoso.openai.azure.com")
    page.get_by_role("textbox", name="Model 1 name").fill("gpt-4o-mini")
    deployment.fill("prod-4o-mini")
    dialog.get_by_role("button", name="Add provider").click()
    expect(dialog).to_be_hidden()
    azure = console.api.get("/providers").json()["items"][0]
    assert azure["kind"] == "azure_openai" and azure["api_version"] == "2024-10-21"
    assert azure["models"][0]["deployment"] == "prod-4o-mini"

    # gemini: the counter choice, and the margin only when the provider counts.
    page.get_by_role("button", name="Add provider").first.click()
    kind.select_option("gemini")
    expect(counting).to_be_visible()
    expect(margin).to_be_hidden()
    expect(api_version).to_be_hidden()
    expect(deployment).to_be_hidden()
    counting.select_option("upstream")
    expect(margin).to_be_visible()
    margin.fill("20")
    page.get_by_role("textbox", name="Name", exact=True).fill("google")
    page.get_by_role("textbox", name="Base URL").fill(
        "https://generativelanguage.googleapis.com/v1beta"
    )
    page.get_by_role("textbox", name="Model 1 name").fill("gemini-2.5-flash")
    dialog.get_by_role("button", name="Add provider").click()
    expect(dialog).to_be_hidden()
    google = next(p for p in console.api.get("/providers").json()["items"] if p["name"] == "google")
    assert (google["input_counting"], google["counting_margin"]) == ("upstream", 20)

"""Console details a new user notices in the first hour (issue 15, item 9): the
breadcrumb names the page as its title does, the Create form checks its
required fields before anything is sent, and the Activity tab shows one line
per change without full-width colour bars."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import Console


@pytest.mark.browser
def test_breadcrumb_and_required_fields_checked_in_the_page(console: Console) -> None:
    page = console.page
    console.add_provider()
    console.sign_in()
    crumbs = page.locator("nav.crumbs")
    expect(crumbs).to_contain_text("AI API Keys")
    expect(crumbs).not_to_contain_text("APIKEY")

    page.get_by_role("link", name="Create").first.click()
    expect(page.get_by_role("heading", name="Create AI API key")).to_be_visible()
    expect(crumbs).to_contain_text("AI API Keys")
    sent: list[str] = []
    page.on(
        "request",
        lambda request: sent.append(request.url) if request.method == "POST" else None,
    )
    page.get_by_role("button", name="Create", exact=True).click()

    for field_id in ("f-alias", "f-provider-model", "f-key-code", "f-input-limit"):
        expect(page.locator(f"#{field_id}-error")).to_contain_text("required")
        expect(page.locator(f"#{field_id}")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("form-errors")).to_contain_text("There are 4 problems")
    expect(page.get_by_role("textbox", name="API Key Alias")).to_be_focused()
    page.get_by_role("spinbutton", name="Output Limit").fill("-1")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#f-output-limit-error")).to_contain_text("greater than or equal to 0")
    assert sent == [], f"the page sent an incomplete form: {sent}"
    assert console.api.get("/apikeys").json()["total"] == 0


@pytest.mark.browser
def test_activity_shows_one_line_per_change(console: Console) -> None:
    page = console.page
    console.add_provider()
    key = console.add_key("activity-team")
    changed = console.api.patch(
        f"/apikeys/{key['id']}",
        json={"input_limit": 8000, "usage_limit": "use_anyway"},
        headers={"If-Match": f'"{key["version"]}"'},
    )
    assert changed.status_code == 200, changed.text
    console.sign_in(f"#/keys/{key['id']}/activity")
    changes = page.locator(".timeline .changes > li")
    expect(changes).to_have_count(2)
    for index in range(2):
        change = changes.nth(index)
        box: Any = change.bounding_box()
        line_height = change.evaluate("el => parseFloat(getComputedStyle(el).lineHeight)")
        assert box["height"] < 1.6 * line_height, f"change {index} wraps: {box}"
        for tag in ("del", "ins"):
            mark: Any = change.locator(tag).bounding_box()
            assert mark["width"] < box["width"] / 3, f"{tag} is a wide bar: {mark} in {box}"
    expect(changes.first).to_contain_text("4000")
    console.shot("activity-one-line-per-change")

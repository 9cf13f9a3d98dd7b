"""Browser fixtures: Debian's Chromium driven by Playwright's sync API.

The browser is installed by an explicit step, ``make browser`` (``make test``
and ``.ci/run`` run it first), never from here: Playwright's own browser
download does not work in CI here, so the tests use ``/usr/bin/chromium`` (or
``$AIGW_TEST_CHROMIUM``). Without it the browser tests are skipped, saying how
to get it; without Playwright (the ``browser`` extra of pyproject.toml) they are
not collected. Each test gets a real ``aigw serve`` process on a clean database
(the worker's shared one, reset: ``gateway_process``) and a fresh browser
context in the worker's one Chromium. Screenshots go to ``test-artifacts/ui/`` (and a failing test leaves one
there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import REPO_ROOT, Gateway

try:
    import playwright  # noqa: F401
except ImportError:  # the `browser` extra is not installed: nothing here can run
    collect_ignore_glob = ["test_*.py"]

CHROMIUM = Path(os.environ.get("AIGW_TEST_CHROMIUM") or "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
DOCS_IMG = REPO_ROOT / "docs" / "img"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 812}


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            f"{CHROMIUM} is missing: run `make browser` (as root: apt-get install chromium)"
        )
    return str(CHROMIUM)


@pytest.fixture(scope="session")
def _chromium(chromium_executable: str) -> Iterator[tuple[Any, asyncio.AbstractEventLoop]]:
    """One Chromium per pytest process (per xdist worker), and the event loop of
    the Playwright driving it: a launch costs ~1 s of CPU (the driver, the
    browser), and each test gets a fresh context anyway (see :func:`browser`)."""
    from playwright.sync_api import sync_playwright

    manager = sync_playwright()
    playwright = manager.start()
    loop = asyncio._get_running_loop()
    assert loop is not None
    try:
        chromium = playwright.chromium.launch(
            executable_path=chromium_executable, args=LAUNCH_ARGS, headless=True
        )
    except BaseException:
        manager.__exit__()
        asyncio._set_running_loop(None)
        raise
    asyncio._set_running_loop(None)
    try:
        yield chromium, loop
    finally:
        asyncio._set_running_loop(loop)
        try:
            chromium.close()
        finally:
            manager.__exit__()
            asyncio._set_running_loop(None)


@pytest.fixture
def browser(
    _chromium: tuple[Any, asyncio.AbstractEventLoop],
    start_gateway_process: Any,
    gateway_process: Gateway,
) -> Iterator[Any]:
    """The worker's Chromium, for one test (which makes its own contexts:
    :func:`console_factory`).

    Playwright's sync API marks its own event loop as running in this thread
    between calls, and the suite's async fixtures (the database) need the
    thread free. So the loop is marked running only inside each test: after the
    async fixtures are set up (hence the dependency on the gateway fixtures) and
    until before they are torn down.
    """
    chromium, loop = _chromium
    asyncio._set_running_loop(loop)
    try:
        yield chromium
    finally:
        asyncio._set_running_loop(None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80]


@dataclass
class Console:
    """A signed-out browser page on a running gateway, plus the admin API."""

    gateway: Gateway
    page: Any
    api: httpx.Client
    name: str
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.gateway.url}/ui/"

    def open(self, route: str = "#/keys") -> None:
        self.page.goto(self.url + route)

    def sign_in(self, route: str = "#/keys") -> None:
        from playwright.sync_api import expect

        self.open(route)
        self.page.get_by_label("Admin token").fill(self.gateway.admin_token)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.locator("h1[data-page-title]")).to_be_visible()

    def shot(self, label: str, *, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{_slug(self.name)}--{_slug(label)}.png"
        if full_page:
            # From the top, so the sticky top bar is drawn where it belongs.
            self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        return path

    def add_provider(
        self,
        name: str = "openai-main",
        models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o"),
        **extra: Any,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "models": [{"name": model} for model in models],
            **extra,
        }
        response = self.api.post("/providers", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def add_key(
        self, alias: str, provider: str = "openai-main", model: str = "gpt-4o-mini", **extra: Any
    ) -> dict[str, Any]:
        body = {
            "alias": alias,
            "provider": provider,
            "model": model,
            "key_code": "sk-test-" + "0123456789abcdef" + alias[:4],
            "input_limit": 4000,
            **extra,
        }
        response = self.api.post("/apikeys", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture
def console_factory(
    browser: Any, gateway_process: Gateway, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """Make a Console at a viewport, on the worker's shared gateway (reset for this
    test, see tests/conftest.py) unless given another; pages are closed after the test."""
    made: list[tuple[Console, Any]] = []

    def make(viewport: dict[str, int] = DESKTOP, gateway: Gateway | None = None) -> Console:
        gw = gateway or gateway_process
        context = browser.new_context(
            viewport=viewport,
            locale="en-US",
            timezone_id="UTC",
            color_scheme="light",
            device_scale_factor=1,
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gw.url)
        context.set_default_timeout(10_000)
        page = context.new_page()
        console = Console(
            gateway=gw,
            page=page,
            api=gw.admin(),
            name=f"{request.node.name}-{viewport['width']}",
        )
        page.on("pageerror", lambda error: console.page_errors.append(str(error)))
        page.on(
            "console",
            lambda message: (
                console.csp_violations.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        made.append((console, context))
        return console

    yield make

    failed = getattr(request.node, "rep_call", None)
    for console, context in made:
        if failed is not None and failed.failed:
            # A screenshot of the failure helps; failing to take one must not hide it.
            with contextlib.suppress(Exception):
                console.shot("failure")
        console.api.close()
        context.close()
    for console, _ in made:
        assert console.page_errors == [], f"uncaught errors in the page: {console.page_errors}"
        assert console.csp_violations == [], f"CSP violations: {console.csp_violations}"


@pytest.fixture
def console(console_factory: Any) -> Console:
    made: Console = console_factory()
    return made

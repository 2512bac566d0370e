"""Real servers for the browser: the app and the Checkout emulator on loopback, and Chromium.

One app + emulator and one Chromium per test module (workshop/browser_tour.py starts them);
each test gets its own browser context (cookies) and page. Screenshots of the flows go to
test-artifacts/e2e/ (not committed; docs/screenshots comes from `python -m workshop.screenshots`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from workshop.browser_tour import Live, launch, live_servers

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[Live]:
    """The app (CSRF on) and the emulator delivering signed webhooks to it, like scripts/run."""
    with live_servers(database_url) as servers:
        yield servers


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in this thread
# while it is open, and the agent's asyncio.run() in later (non-browser) tests would fail.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    shots = ARTIFACTS / request.node.name
    shots.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    page.shot = shot  # type: ignore[attr-defined]
    yield page
    context.close()

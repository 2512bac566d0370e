"""Real servers for the browser: the app and the Checkout emulator on loopback, and Chromium.

The app runs in a threaded werkzeug server with CSRF on (as in production); the emulator
delivers signed webhooks to it. Chromium is Debian's, driven by Playwright (no browser
download). Screenshots go to test-artifacts/e2e/ (not committed).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from scripts.checkout_emulator import EmulatorConfig, EmulatorServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"
WEBHOOK_SECRET = "whsec_e2e_secret"


class AppServer:
    """The tokenbill app on a free loopback port, in a background thread."""

    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def live(make_app) -> Iterator[tuple[str, EmulatorServer]]:
    """(app URL, emulator) wired together like `scripts/run` does without a Stripe key."""
    config = EmulatorConfig(webhook_secret=WEBHOOK_SECRET, webhook_url=None, seed=7)
    with EmulatorServer(config) as emulator:
        app = make_app(
            WTF_CSRF_ENABLED=True,
            STRIPE_API_BASE=emulator.url,
            STRIPE_SECRET_KEY="sk_test_emulator",
            STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            PAYMENTS_SIMULATED=True,
        )
        with AppServer(app) as server:
            # both URLs are known only once bound; both are read per request
            app.config["PUBLIC_BASE_URL"] = server.url
            config.webhook_url = f"{server.url}/api/webhook/stripe"
            yield server.url, emulator


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in this thread
# while it is open, and the agent's asyncio.run() in later (non-browser) tests would fail.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
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

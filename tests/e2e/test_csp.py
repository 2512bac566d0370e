"""The Content-Security-Policy holds in a real browser: no violations, the scripts still run."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e


def test_pages_run_under_the_csp_without_violations(live, page: Page):
    base, _ = live
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.goto(f"{base}/auth/register")
    page.fill("#email", f"csp-{uuid.uuid4().hex[:10]}@example.test")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#token-balance")).to_have_text("0")

    # chat.js runs: it answers "need tokens" without a reload
    page.fill("#chat-message", "hello under a strict CSP")
    page.click("#chat-send")
    expect(page.locator("#need-tokens")).to_be_visible()

    for path in ("/billing/buy", "/history/", "/account/settings"):
        page.goto(f"{base}{path}")
    # an inline script injected into the page must be refused
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__inline_ran = true'; document.body.appendChild(s); }"
    )
    assert page.evaluate("() => window.__inline_ran === true") is False
    assert any("script-src" in v for v in violations)
    assert [v for v in violations if "script-src" not in v or "inline" not in v] == []

"""Auto top-up in a real browser against the emulator: opt in to save the card on the buy page,
turn auto top-up on, spend below the threshold, and see the top-up arrive.

The worker (`flask --app webapp auto-topup`) runs here as one pass of its run_once, against the
emulator, which delivers the signed payment_intent.succeeded back to the app before answering.
"""

from __future__ import annotations

import uuid

import pytest
import stripe
from playwright.sync_api import Page, expect

from tests.conftest import audit
from webapp.ops.auto_topup import run_once
from workshop.browser_tour import SUCCESS, pay, register, send

pytestmark = pytest.mark.e2e


def test_save_the_card_spend_below_the_threshold_and_the_topup_arrives(
    live, page: Page, owner, database_url
):
    base = live.url
    email = f"e2e-topup-{uuid.uuid4().hex[:8]}@example.test"
    register(page, base, email)

    page.goto(f"{base}/billing/buy")
    package = page.locator(".package:has(.package-tokens:text-is('100'))")
    package.locator("input[name=save_card]").check()
    package.locator("button").click()
    page.wait_for_selector("#payment-form")
    pay(page, SUCCESS)
    expect(page.locator("#token-balance")).to_have_text("100")

    page.goto(f"{base}/account/settings")
    expect(page.locator("#saved-card")).to_contain_text("ending in 4242")
    page.check("input[name=enabled]")
    page.fill("#topup_threshold", "100")
    page.select_option("#topup_package", "tokens_100")
    page.fill("#topup_cap", "20")
    page.click("text=Save auto top-up")
    expect(page.locator(".flash.flash-success")).to_contain_text("Auto top-up is on")
    page.shot("01-auto-topup-on")

    page.goto(f"{base}/")
    send(page, "spend a little")
    spent = owner.execute("select balance from api.accounts where email = %s", [email]).fetchone()
    assert spent["balance"] < 100

    client = stripe.StripeClient(
        "sk_test_emulator", base_addresses={"api": live.emulator.url}, max_network_retries=0
    )
    counts = run_once(database_url, client)
    # the emulator delivers payment_intent.succeeded before it answers: usually granted already
    assert counts["succeeded"] + counts["processing"] >= 1

    page.goto(f"{base}/account/settings")
    expect(page.locator("#token-balance")).to_have_text(str(spent["balance"] + 100))
    expect(page.locator("#recent-topups")).to_contain_text("succeeded")
    page.shot("02-topup-arrived")
    assert audit(owner) == []

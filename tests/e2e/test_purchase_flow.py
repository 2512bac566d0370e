"""The whole product in a real browser: register, refused, buy, pay, chat, history.

Chromium talks to the real app (CSRF on) and the local Checkout emulator, which delivers
signed webhooks back to the app in random order with a duplicate, as Stripe may.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD, audit

pytestmark = pytest.mark.e2e

NEED_TOKENS = "You need more tokens to use the agent"


def register(page: Page, base: str) -> str:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.test"
    page.goto(f"{base}/auth/register")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#token-balance")).to_have_text("0")
    return email


def send(page: Page, text: str) -> None:
    page.fill("#chat-message", text)
    page.click("#chat-send")


def start_checkout(page: Page, base: str, tokens: int) -> None:
    page.goto(f"{base}/billing/buy")
    page.click(f"text=Buy {tokens} tokens")
    expect(page.locator("#payment-form")).to_be_visible()


def pay(page: Page, card: str) -> None:
    page.fill("#card_number", card)
    page.fill("#expiry", "12 / 34")
    page.fill("#cvc", "123")
    page.click("#pay-button")


def test_register_refused_buy_chat_history(live, page: Page, owner):
    base, _ = live
    email = register(page, base)
    page.shot("01-registered-zero-balance")
    assert page.locator(".banner").inner_text().startswith("Payments are simulated")

    # refused with the message and a way to buy
    send(page, "hello before paying")
    expect(page.locator("#need-tokens")).to_be_visible()
    expect(page.locator("#chat-status, #need-tokens").first).to_contain_text(NEED_TOKENS)
    expect(page.locator("#need-tokens a[href$='/billing/buy']")).to_be_visible()
    expect(page.locator("#token-balance")).to_have_text("0")
    page.shot("02-refused-need-tokens")

    # buy 100 tokens and pay with the success card
    start_checkout(page, base, 100)
    expect(page.locator("#total")).to_have_text("$5.00")
    page.shot("03-emulator-pay-page")
    pay(page, "4242 4242 4242 4242")
    expect(page.locator("#tokens-added")).to_have_text("100")
    expect(page.locator("#new-balance")).to_have_text("100")
    expect(page.locator("#token-balance")).to_have_text("100")
    page.shot("04-success")

    # chat three messages: the header follows without a reload
    page.goto(f"{base}/")
    page.evaluate("window.__sameDocument = true")
    for i in range(3):
        send(page, f"message {i + 1}")
        expect(page.locator("#token-balance")).to_have_text(str(99 - i))
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    expect(page.locator("#messages .message.assistant")).to_have_count(3)
    page.shot("05-chat-97")

    # history: the purchase with its receipt, and three consumptions
    page.goto(f"{base}/history/")
    purchases = page.locator("#purchases tbody tr")
    expect(purchases).to_have_count(1)
    expect(purchases.first).to_contain_text("$5.00")
    expect(purchases.first.locator("a", has_text="Stripe receipt")).to_have_attribute(
        "href", re.compile(r"/receipts/ch_")
    )
    expect(page.locator("#activity tbody tr", has_text="Agent request")).to_have_count(3)
    page.shot("06-history")

    user = owner.execute("select id, balance from api.accounts where email = %s", [email])
    assert user.fetchone()["balance"] == 97
    assert audit(owner) == []


def test_declined_card_grants_nothing_and_cancel_returns(live, page: Page, owner):
    base, _ = live
    email = register(page, base)

    start_checkout(page, base, 250)
    pay(page, "4000 0000 0000 0002")
    expect(page.locator("#card-error")).to_have_text("Your card was declined.")
    expect(page.locator("#payment-form")).to_be_visible()
    page.shot("01-declined")

    page.click("#cancel-link")
    expect(page).to_have_url(re.compile(r"/billing/cancel"))
    expect(page.locator("main")).to_contain_text("Nothing was charged.")
    expect(page.locator("main a", has_text="Try again")).to_be_visible()
    expect(page.locator("#token-balance")).to_have_text("0")
    page.shot("02-cancelled")

    row = owner.execute(
        "select a.balance, count(p.*) filter (where p.status = 'granted') as granted,"
        " count(p.*) filter (where p.status = 'failed') as failed"
        " from api.accounts a left join api.purchases p on p.user_id = a.id"
        " where a.email = %s group by a.balance",
        [email],
    ).fetchone()
    assert row["balance"] == 0 and row["granted"] == 0
    assert audit(owner) == []

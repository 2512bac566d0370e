"""The whole product in a real browser, with each of the seed's four test cards.

Chromium talks to the real app (CSRF on) and the local Checkout emulator, which delivers
signed webhooks back to the app (in random order, a paid one twice) before the browser moves
on, as Stripe may. Each flow ends with the balance in the header and the database, and the
purchase as the buyer's history shows it.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import audit
from workshop.browser_tour import (
    DECLINE,
    INSUFFICIENT,
    SECURE,
    SUCCESS,
    pay,
    register,
    send,
    start_checkout,
)
from workshop.emulator.cards import AUTHENTICATION_FAILED

pytestmark = pytest.mark.e2e

NEED_TOKENS = "You need more tokens to use the agent"


def new_user(page: Page, base: str) -> str:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.test"
    register(page, base, email)
    expect(page.locator("#token-balance")).to_have_text("0")
    return email


def balance(owner, email: str) -> int:
    row = owner.execute("select balance from api.accounts where email = %s", [email]).fetchone()
    return row["balance"]


def purchases(page: Page, base: str):
    page.goto(f"{base}/history/")
    return page.locator("#purchases tbody tr")


def test_register_refused_buy_chat_history(live, page: Page, owner):
    base = live.url
    email = new_user(page, base)
    page.shot("01-registered-zero-balance")
    assert page.locator(".banner").inner_text().startswith("Payments are simulated")
    expect(page.locator(".flash.flash-success")).to_contain_text("Welcome")

    # refused with the message and one way to buy (no "low balance: 0 tokens left" as well)
    send_refused = page.locator("#chat-message")
    send_refused.fill("hello before paying")
    send_refused.press("Enter")
    expect(page.locator("#chat-status")).to_contain_text(NEED_TOKENS)
    expect(page.locator("#need-tokens")).to_be_visible()
    expect(page.locator("#need-tokens a[href$='/billing/buy']")).to_be_visible()
    expect(page.locator("#low-balance-alert")).to_be_hidden()
    expect(page.locator("main a:visible", has_text=re.compile("buy", re.I))).to_have_count(1)
    expect(page.locator("#chat-message")).to_have_value("hello before paying")  # given back
    page.shot("02-refused-need-tokens")

    # buy 100 tokens and pay with the success card
    start_checkout(page, base, 100)
    expect(page.locator("#total")).to_have_text("$5.00")
    page.shot("03-emulator-pay-page")
    pay(page, SUCCESS)
    expect(page.locator("#tokens-added")).to_have_text("100")
    expect(page.locator("#new-balance")).to_have_text("100")
    expect(page.locator("#token-balance")).to_have_text("100")
    page.shot("04-success")

    # chat three messages with Enter: the header follows without a reload
    page.goto(f"{base}/")
    page.evaluate("window.__sameDocument = true")
    page.fill("#chat-message", "first line")
    page.press("#chat-message", "Shift+Enter")  # a new line, not a send
    expect(page.locator("#messages .message")).to_have_count(0)
    page.fill("#chat-message", "")
    for i in range(3):
        send(page, f"message {i + 1}\nsecond line")
        expect(page.locator("#token-balance")).to_have_text(str(99 - i))
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    expect(page.locator("#messages .message.assistant")).to_have_count(3)
    live_heights = page.eval_on_selector_all(
        "#messages .message", "els => els.map(e => e.getBoundingClientRect().height)"
    )
    page.shot("05-chat-97")

    # reopened, the same conversation looks the same (no template indentation in bubbles)
    page.reload()
    reopened = page.eval_on_selector_all(
        "#messages .message", "els => els.map(e => e.getBoundingClientRect().height)"
    )
    assert len(reopened) == len(live_heights) == 6
    assert all(abs(a - b) <= 2 for a, b in zip(reopened, live_heights, strict=True))

    # history: the purchase with its receipt, and three consumptions, times labelled UTC
    rows = purchases(page, base)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("$5.00")
    expect(rows.first).to_contain_text("paid")
    expect(rows.first).to_contain_text("UTC")
    expect(rows.first.locator("a", has_text="Stripe receipt")).to_have_attribute(
        "href", re.compile(r"/receipts/ch_")
    )
    expect(page.locator("#activity tbody tr", has_text="Agent request")).to_have_count(3)
    page.shot("06-history")

    assert balance(owner, email) == 97
    assert audit(owner) == []


def test_declined_card_grants_nothing_and_cancel_returns(live, page: Page, owner):
    base = live.url
    email = new_user(page, base)

    start_checkout(page, base, 250)
    pay(page, DECLINE)
    expect(page.locator("#card-error")).to_have_text("Your card was declined.")
    expect(page.locator("#payment-form")).to_be_visible()
    page.shot("01-declined")

    page.click("#cancel-link")
    expect(page).to_have_url(re.compile(r"/billing/cancel"))
    expect(page.locator("main")).to_contain_text("Nothing was charged.")
    expect(page.locator("main a", has_text="Try again")).to_be_visible()
    expect(page.locator("#token-balance")).to_have_text("0")
    page.shot("02-cancelled")

    # the buyer sees the declined attempt, with what it was for
    rows = purchases(page, base)
    expect(rows).to_have_count(1)
    for text in ("Standard", "$10.00", "failed", "Your card was declined."):
        expect(rows.first).to_contain_text(text)
    assert balance(owner, email) == 0
    assert audit(owner) == []


def test_insufficient_funds_declines_then_another_card_pays(live, page: Page, owner):
    base = live.url
    email = new_user(page, base)

    start_checkout(page, base, 250)
    pay(page, INSUFFICIENT)
    expect(page.locator("#card-error")).to_have_text("Your card has insufficient funds.")
    page.shot("01-insufficient-funds")
    pay_page = page.url
    rows = purchases(page, base)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Your card has insufficient funds.")
    expect(page.locator("#token-balance")).to_have_text("0")

    # back on the same Checkout page, a good card pays the same PaymentIntent
    page.goto(pay_page)
    pay(page, SUCCESS)
    expect(page.locator("#tokens-added")).to_have_text("250")
    expect(page.locator("#token-balance")).to_have_text("250")
    rows = purchases(page, base)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("paid")
    expect(rows.first).not_to_contain_text("insufficient")
    assert balance(owner, email) == 250
    assert audit(owner) == []


def test_3d_secure_completed_pays(live, page: Page, owner):
    base = live.url
    email = new_user(page, base)

    start_checkout(page, base, 600)
    pay(page, SECURE)
    expect(page).to_have_url(re.compile(r"/authenticate$"))
    expect(page.locator("#challenge-message")).to_contain_text("$20.00")
    page.shot("01-challenge")
    assert balance(owner, email) == 0  # nothing before the challenge is answered

    page.click("#complete-authentication")
    expect(page.locator("#tokens-added")).to_have_text("600")
    expect(page.locator("#token-balance")).to_have_text("600")
    rows = purchases(page, base)
    expect(rows).to_have_count(1)
    for text in ("Pro", "$20.00", "600", "paid"):
        expect(rows.first).to_contain_text(text)
    assert balance(owner, email) == 600
    assert audit(owner) == []


def test_3d_secure_failed_grants_nothing(live, page: Page, owner):
    base = live.url
    email = new_user(page, base)

    start_checkout(page, base, 100)
    pay(page, SECURE)
    page.click("#fail-authentication")
    expect(page.locator("#card-error")).to_have_text(AUTHENTICATION_FAILED["message"])
    expect(page.locator("#payment-form")).to_be_visible()
    page.shot("01-authentication-failed")

    rows = purchases(page, base)
    expect(rows).to_have_count(1)
    for text in ("Starter", "$5.00", "failed", "unable to authenticate"):
        expect(rows.first).to_contain_text(text)
    expect(page.locator("#token-balance")).to_have_text("0")
    assert balance(owner, email) == 0
    assert audit(owner) == []

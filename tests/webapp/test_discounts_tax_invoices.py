"""Promotion codes, tax and invoices on Checkout purchases (0019), through really signed
webhook events: tokens come from the package; a lower total needs a Stripe discount to explain
it; amounts are kept net/tax/total; invoice links reach the history page."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AuthActions, audit, balance_of
from tests.support import stripe_events as ev
from tests.webapp.test_webhooks import deliver, purchase


@pytest.fixture(autouse=True)
def ledger_stays_consistent(owner):
    yield
    assert audit(owner) == []


def session_event(
    user, *, total: int, subtotal: int = 500, discount: int = 0, tax: int = 0, **extra: Any
) -> tuple[dict[str, Any], str]:
    """checkout.session.completed for tokens_100 (500 cents) with Stripe's money fields."""
    pi = ev.new_id("pi")
    evt = ev.checkout_session_completed(user, "tokens_100", total, pi=pi)
    obj = evt["data"]["object"]
    obj["amount_subtotal"] = subtotal
    obj["total_details"] = {"amount_discount": discount, "amount_shipping": 0, "amount_tax": tax}
    obj.update(extra)
    return evt, pi


def checkout_intent(user, pi: str, amount: int) -> dict[str, Any]:
    """The session's payment_intent.succeeded, with the metadata billing.py puts on it."""
    evt = ev.payment_intent_succeeded(user, "tokens_100", amount, pi=pi)
    evt["data"]["object"]["metadata"]["source"] = "checkout"
    return evt


@pytest.mark.parametrize("intent_first", [False, True])
def test_promotion_code_purchase_grants_full_tokens_and_records_the_discount(
    client, owner, make_user, intent_first
):
    user = make_user()
    evt, pi = session_event(
        user, total=400, discount=100, discounts=[{"promotion_code": "promo_SPRING"}]
    )
    intent = checkout_intent(user, pi, 400)
    first, second = (intent, evt) if intent_first else (evt, intent)

    answers = [deliver(client, first).get_json(), deliver(client, second).get_json()]

    assert [a["outcome"] for a in answers] == ["processed", "processed"]
    assert balance_of(owner, user) == 100
    row = purchase(owner, pi)
    assert (row["status"], row["tokens_granted"], row["amount_cents"]) == ("granted", 100, 400)
    assert (row["subtotal_cents"], row["discount_cents"], row["promotion_code"]) == (
        500,
        100,
        "promo_SPRING",
    )


@pytest.mark.parametrize(
    ("total", "subtotal", "discount", "why"),
    [
        (400, 400, 0, "a lower total with no discount"),
        (400, 500, 0, "a subtotal that does not add up to the total"),
        (300, 500, 100, "a discount that does not explain the total"),
        (320, 400, 80, "a discounted subtotal that is not the package price"),
    ],
)
def test_underpaid_total_without_a_matching_discount_is_refused(
    client, owner, make_user, total, subtotal, discount, why
):
    user = make_user()
    evt, pi = session_event(user, total=total, subtotal=subtotal, discount=discount)
    answer = deliver(client, evt).get_json()
    assert answer["outcome"] == "rejected", why
    assert "amount mismatch" in answer["detail"]
    assert balance_of(owner, user) == 0
    assert purchase(owner, pi)["status"] == "rejected"


def test_line_items_when_present_must_be_the_package(client, owner, make_user):
    user = make_user()
    items = {"data": [{"quantity": 2, "amount_subtotal": 500, "price": {"unit_amount": 250}}]}
    evt, _ = session_event(user, total=400, discount=100, line_items=items)
    assert deliver(client, evt).get_json()["outcome"] == "rejected"
    good = {"data": [{"quantity": 1, "amount_subtotal": 500, "price": {"unit_amount": 500}}]}
    evt, _ = session_event(user, total=400, discount=100, line_items=good)
    assert deliver(client, evt).get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100


def test_tax_is_stored_net_tax_total(client, owner, make_user):
    user = make_user()
    evt, pi = session_event(user, total=545, tax=45)
    assert deliver(client, evt).get_json()["outcome"] == "processed"
    row = purchase(owner, pi)
    assert (row["amount_cents"], row["tax_cents"], row["net_cents"]) == (545, 45, 500)
    assert balance_of(owner, user) == 100


def test_full_refund_of_a_discounted_purchase_takes_all_tokens_back(client, owner, make_user):
    user = make_user()
    ch = ev.new_id("ch")
    evt, pi = session_event(user, total=400, discount=100)
    deliver(client, evt)
    half = ev.charge_refunded(pi, 400, 200, charge=ch)
    deliver(client, half)
    assert balance_of(owner, user) == 50  # half of what was paid: half the tokens
    deliver(client, ev.charge_refunded(pi, 400, 400, charge=ch, previously_refunded=200))
    assert balance_of(owner, user) == 0


def test_a_refund_reported_before_the_discounted_grant_claws_back_against_the_total(
    client, owner, make_user
):
    """Out of order: the refund of half of the 400 paid arrives first; the grant (which records
    the session's total in the same UPDATE since 0022) then takes back half the tokens, not
    200/500 of them."""
    user = make_user()
    ch = ev.new_id("ch")
    evt, pi = session_event(user, total=400, discount=100)
    deliver(client, ev.charge_refunded(pi, 400, 200, charge=ch))
    deliver(client, evt)
    assert balance_of(owner, user) == 50
    row = owner.execute(
        "select amount_cents, subtotal_cents, discount_cents, tokens_clawed"
        " from tokenbill.payments where payment_intent_id = %s",
        [pi],
    ).fetchone()
    assert row == {
        "amount_cents": 400,
        "subtotal_cents": 500,
        "discount_cents": 100,
        "tokens_clawed": 50,
    }


def test_invoice_links_from_the_session_and_from_invoice_events(client, owner, make_user):
    user = make_user()
    inv = ev.new_id("in")
    evt, pi = session_event(user, total=500, invoice=inv)
    deliver(client, evt)
    assert purchase(owner, pi)["invoice_url"] is None  # the event names the invoice only

    paid = ev.event(
        "invoice.paid",
        {
            "id": inv,
            "object": "invoice",
            "hosted_invoice_url": f"https://invoice.stripe.com/i/{inv}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/{inv}/pdf",
        },
    )
    assert deliver(client, paid).get_json()["outcome"] == "processed"
    row = purchase(owner, pi)
    assert row["invoice_url"] == f"https://invoice.stripe.com/i/{inv}"
    assert row["invoice_pdf_url"].endswith("/pdf")

    stranger = ev.event("invoice.paid", {"id": ev.new_id("in"), "object": "invoice"})
    assert deliver(client, stranger).get_json()["outcome"] == "ignored"


def test_an_invoice_link_must_be_https(client, owner, make_user):
    user = make_user()
    inv = {"id": ev.new_id("in"), "object": "invoice", "hosted_invoice_url": "javascript:alert(1)"}
    evt, pi = session_event(user, total=500, invoice=inv)
    deliver(client, evt)
    assert purchase(owner, pi)["invoice_url"] is None


def test_history_links_invoice_pdf_and_receipt_and_admin_sees_the_discount(
    make_app, owner, admin_id
):
    app = make_app()
    client = app.test_client()
    actions = AuthActions(client)
    actions.register()
    user = actions.user_id(owner)
    inv = {
        "id": ev.new_id("in"),
        "object": "invoice",
        "hosted_invoice_url": "https://invoice.stripe.com/i/x",
        "invoice_pdf": "https://pay.stripe.com/invoice/x/pdf",
    }
    evt, pi = session_event(
        user, total=400, discount=100, invoice=inv, discounts=[{"promotion_code": "promo_X1"}]
    )
    evt["data"]["object"]["payment_intent"] = {
        "id": pi,
        "object": "payment_intent",
        "latest_charge": ev.charge_object(pi, 400, receipt_url="https://pay.stripe.com/receipts/r"),
    }
    assert deliver(client, evt).get_json()["outcome"] == "processed"

    page = client.get("/history/").data.decode()
    assert 'href="https://invoice.stripe.com/i/x"' in page
    assert 'href="https://pay.stripe.com/invoice/x/pdf"' in page
    assert 'href="https://pay.stripe.com/receipts/r"' in page
    assert "discount $1.00" in page

    owner.execute("select api.set_admin(%s)", [actions.email])
    admin_page = client.get(f"/admin/users/{user}").data.decode()
    assert "discount $1.00" in admin_page and "promo_X1" in admin_page


@pytest.mark.parametrize("webhooks", [True, False])
def test_a_promotion_code_on_the_emulator_grants_full_tokens_end_to_end(make_app, owner, webhooks):
    """Buy 250 tokens ($10) with the emulator's TOKENS20 code: $8 paid, 250 granted, $2 kept
    as the discount — by the webhook, or by the success page when no webhook arrives."""
    from tests.webapp.test_checkout import CARD, bought_and_paid

    card = {**CARD, "promotion_code": "TOKENS20"}
    with bought_and_paid(make_app, webhooks=webhooks, card=card, ALLOW_PROMOTION_CODES=True) as (
        client,
        actions,
        session_id,
    ):
        page = client.get(f"/billing/success?session_id={session_id}")
        user = actions.user_id(owner)
    assert (
        page.status_code == 200 and '<strong id="tokens-added">250</strong>' in page.data.decode()
    )
    assert balance_of(owner, user) == 250
    row = owner.execute("select * from api.purchases where user_id = %s", [user]).fetchone()
    assert (row["amount_cents"], row["subtotal_cents"], row["discount_cents"]) == (800, 1000, 200)
    assert row["promotion_code"] == "promo_emulator_tokens20"
    assert row["tokens_granted"] == 250

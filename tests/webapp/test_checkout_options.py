"""What else a Checkout Session carries (issue 14): the account's one Stripe Customer, the
saved-card opt-in, invoices, promotion codes and tax — checked against the real stripe-mock
through the recording proxy."""

from __future__ import annotations

import threading

from tests.conftest import AuthActions
from tests.webapp.test_checkout import SESSIONS, form_nonce

CUSTOMERS = "/v1/customers"


def signed_in(app):
    client = app.test_client()
    actions = AuthActions(client)
    actions.register()
    return client, actions


def buy(client, package="tokens_100", **extra):
    nonce = form_nonce(client.get("/billing/buy").data)
    return client.post("/billing/checkout", data={"package": package, "nonce": nonce, **extra})


def test_one_customer_per_account_created_once_and_passed_to_every_session(make_app, proxy, owner):
    client, actions = signed_in(make_app(STRIPE_API_BASE=proxy.url))
    user = actions.user_id(owner)

    assert buy(client).status_code == 303
    assert buy(client, "tokens_250").status_code == 303

    [created] = proxy.requests_to("POST", CUSTOMERS)
    assert created.header("Idempotency-Key") == f"tokenbill-customer-{user}"
    assert created.form["email"] == actions.email
    assert created.form["metadata[user_id]"] == str(user)
    recorded = owner.execute(
        "select customer_id from api.stripe_customers where user_id = %s", [user]
    ).fetchone()["customer_id"]
    sessions = proxy.requests_to("POST", SESSIONS)
    assert [s.form["customer"] for s in sessions] == [recorded, recorded]


def test_concurrent_first_purchases_record_one_customer(make_app, proxy, owner):
    """Two tabs buying at once: one idempotency key, so Stripe answers one Customer."""
    app = make_app(STRIPE_API_BASE=proxy.url)
    client, actions = signed_in(app)
    other = app.test_client()
    AuthActions(other).login(email=actions.email)
    tabs = [(c, form_nonce(c.get("/billing/buy").data)) for c in (client, other)]
    answers: list[int] = []

    def checkout(tab, nonce: str) -> None:
        answers.append(
            tab.post(
                "/billing/checkout", data={"package": "tokens_100", "nonce": nonce}
            ).status_code
        )

    threads = [threading.Thread(target=checkout, args=tab) for tab in tabs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [303, 303]
    customers = {s.form["customer"] for s in proxy.requests_to("POST", SESSIONS)}
    assert len(customers) == 1
    # stripe-mock answers every create with the same fixture id, so the check that can fail is
    # the request: every Customer create of this account carries the account's one key
    keys = {c.header("Idempotency-Key") for c in proxy.requests_to("POST", CUSTOMERS)}
    assert keys == {f"tokenbill-customer-{actions.user_id(owner)}"}


def test_saved_card_only_when_the_buyer_opts_in(make_app, proxy):
    client, _ = signed_in(make_app(STRIPE_API_BASE=proxy.url))
    assert b'name="save_card"' in client.get("/billing/buy").data
    buy(client)
    buy(client, save_card="on")
    plain, saving = (s.form for s in proxy.requests_to("POST", SESSIONS))
    assert "payment_intent_data[setup_future_usage]" not in plain
    assert saving["payment_intent_data[setup_future_usage]"] == "off_session"
    # the opt-in is part of the request, so it is part of the idempotency key too
    keys = {s.header("Idempotency-Key") for s in proxy.requests_to("POST", SESSIONS)}
    assert len(keys) == 2


def test_invoices_by_default_promotion_codes_and_tax_only_when_configured(make_app, proxy):
    client, _ = signed_in(make_app(STRIPE_API_BASE=proxy.url))
    buy(client)
    [default] = (s.form for s in proxy.requests_to("POST", SESSIONS))
    assert default["invoice_creation[enabled]"] == "true"
    assert "allow_promotion_codes" not in default
    assert "automatic_tax[enabled]" not in default

    proxy.clear()
    client, _ = signed_in(
        make_app(
            STRIPE_API_BASE=proxy.url,
            INVOICE_CREATION=False,
            ALLOW_PROMOTION_CODES=True,
            AUTOMATIC_TAX=True,
        )
    )
    assert buy(client).status_code == 303  # stripe-mock accepted the shape
    [configured] = (s.form for s in proxy.requests_to("POST", SESSIONS))
    assert "invoice_creation[enabled]" not in configured
    assert configured["allow_promotion_codes"] == "true"
    assert configured["automatic_tax[enabled]"] == "true"
    assert configured["customer_update[address]"] == "auto"


def test_without_customers_the_session_names_the_email_and_saves_no_card(make_app, proxy):
    client, actions = signed_in(make_app(STRIPE_API_BASE=proxy.url, STRIPE_CUSTOMERS=False))
    buy(client, save_card="on")
    assert proxy.requests_to("POST", CUSTOMERS) == []
    [form] = (s.form for s in proxy.requests_to("POST", SESSIONS))
    assert form["customer_email"] == actions.email
    assert "customer" not in form
    assert "payment_intent_data[setup_future_usage]" not in form


def test_customers_are_on_unless_turned_off():
    from webapp.config import EMULATOR_STRIPE_KEY, customers_enabled

    assert customers_enabled({"STRIPE_SECRET_KEY": "sk_test_x"}) is True
    assert customers_enabled({"STRIPE_SECRET_KEY": EMULATOR_STRIPE_KEY}) is True
    assert customers_enabled({"STRIPE_CUSTOMERS": False}) is False

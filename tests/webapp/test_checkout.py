"""Buying tokens: the Checkout Session we send to (real) stripe-mock, and the pages around it.

A recording proxy sits between the stripe SDK and stripe-mock, because stripe-mock does not
echo what we sent (metadata, URLs, the Idempotency-Key header).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import stripe

from tests.conftest import WEBHOOK_SECRET, AuthActions, balance_of
from tests.support.servers import serve
from tests.support.stripe_events import checkout_session_object, new_id
from webapp.stripe_gateway import fulfil_session, grant_verdict

SESSIONS = "/v1/checkout/sessions"


@pytest.fixture
def shop(make_app, proxy):
    """The app talking to stripe-mock through the proxy, with a signed-in user."""
    app = make_app(STRIPE_API_BASE=proxy.url)
    return app


@pytest.fixture
def buyer(shop):
    client = shop.test_client()
    actions = AuthActions(client)
    actions.register()
    return client, actions


def form_nonce(page: bytes) -> str:
    match = re.search(rb'name="nonce" value="([^"]+)"', page)
    assert match, "buy page has no nonce"
    return match.group(1).decode()


def test_buy_page_lists_active_packages_with_unit_price(buyer):
    client, _ = buyer
    page = client.get("/billing/buy")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    html = page.data.decode()
    assert re.findall(r'data-package="([a-z0-9_]+)"', html) == [
        "tokens_100",
        "tokens_250",
        "tokens_600",
    ]
    # $20.00 for 600 tokens is $3.33 per 100.
    assert "$5.00" in html and "$10.00" in html and "$20.00" in html
    assert "$3.33 per 100 tokens" in html and "$4.00 per 100 tokens" in html
    assert len(set(re.findall(r'name="nonce" value="([^"]+)"', html))) == 1
    assert form_nonce(client.get("/billing/buy").data) != form_nonce(page.data)


def test_buy_requires_login(client):
    response = client.get("/billing/buy")
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]


def test_checkout_sends_the_package_terms_and_records_the_session(buyer, proxy, owner):
    client, actions = buyer
    user_id = actions.user_id(owner)
    nonce = form_nonce(client.get("/billing/buy").data)

    response = client.post("/billing/checkout", data={"package": "tokens_250", "nonce": nonce})

    assert response.status_code == 303
    assert response.headers["Location"].startswith("https://checkout.stripe.com/")
    [sent] = proxy.requests_to("POST", SESSIONS)
    form = sent.form
    assert form["mode"] == "payment"
    assert form["line_items[0][price_data][unit_amount]"] == "1000"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][price_data][product_data][name]"].startswith("Standard")
    assert form["line_items[0][quantity]"] == "1"
    assert form["client_reference_id"] == str(user_id)
    assert form["customer"].startswith("cus_test_")
    assert "customer_email" not in form  # Stripe takes one of customer / customer_email
    for prefix in ("metadata", "payment_intent_data[metadata]"):
        assert form[f"{prefix}[user_id]"] == str(user_id)
        assert form[f"{prefix}[package]"] == "tokens_250"
        assert form[f"{prefix}[tokens]"] == "250"
    assert form["success_url"] == (
        "http://localhost/billing/success?session_id={CHECKOUT_SESSION_ID}"
    )
    assert form["cancel_url"] == "http://localhost/billing/cancel?package=tokens_250"
    assert (sent.header("Idempotency-Key") or "").startswith("tokenbill-checkout-")
    assert sent.header("Authorization") == "Bearer sk_test_tokenbill"

    rows = owner.execute(
        "select id, package_code, amount_cents, currency, tokens, status"
        " from api.checkout_sessions where user_id = %s",
        [user_id],
    ).fetchall()
    assert len(rows) == 1
    assert rows[0]["id"].startswith("cs_test_")
    assert (rows[0]["package_code"], rows[0]["amount_cents"], rows[0]["tokens"]) == (
        "tokens_250",
        1000,
        250,
    )
    assert rows[0]["currency"] == "usd"


def test_double_submit_reuses_the_idempotency_key_but_a_new_form_does_not(buyer, proxy, owner):
    client, actions = buyer
    nonce = form_nonce(client.get("/billing/buy").data)
    first = client.post("/billing/checkout", data={"package": "tokens_100", "nonce": nonce})
    second = client.post("/billing/checkout", data={"package": "tokens_100", "nonce": nonce})
    later_nonce = form_nonce(client.get("/billing/buy").data)
    later = client.post("/billing/checkout", data={"package": "tokens_100", "nonce": later_nonce})

    assert first.status_code == second.status_code == later.status_code == 303
    keys = [r.header("Idempotency-Key") for r in proxy.requests_to("POST", SESSIONS)]
    assert len(keys) == 3
    assert keys[0] == keys[1]
    assert keys[2] != keys[0]
    # Stripe answers a repeated key with the first session, so the double click made one.
    sessions = owner.execute(
        "select count(*) as n from api.checkout_sessions where user_id = %s",
        [actions.user_id(owner)],
    ).fetchone()
    assert sessions["n"] == 2


def test_same_nonce_for_another_package_is_another_purchase(buyer, proxy):
    client, _ = buyer
    nonce = form_nonce(client.get("/billing/buy").data)
    client.post("/billing/checkout", data={"package": "tokens_100", "nonce": nonce})
    client.post("/billing/checkout", data={"package": "tokens_600", "nonce": nonce})
    keys = {r.header("Idempotency-Key") for r in proxy.requests_to("POST", SESSIONS)}
    assert len(keys) == 2


@pytest.fixture
def inactive_package(owner) -> Iterator[str]:
    """tokens_600 taken off sale for one test (packages cannot be deleted, so no new row)."""
    owner.execute("update tokenbill.packages set active = false where code = 'tokens_600'")
    try:
        yield "tokens_600"
    finally:
        owner.execute("update tokenbill.packages set active = true where code = 'tokens_600'")


@pytest.mark.parametrize("package", ["tokens_9999", "", "inactive"])
def test_unknown_or_inactive_package_is_refused_without_calling_stripe(
    buyer, proxy, inactive_package, package
):
    client, _ = buyer
    code = inactive_package if package == "inactive" else package
    nonce = form_nonce(client.get("/billing/buy").data)
    assert inactive_package.encode() not in client.get("/billing/buy").data
    response = client.post("/billing/checkout", data={"package": code, "nonce": nonce})
    assert response.status_code == 400
    assert b"Unknown package" in response.data
    assert proxy.requests_to("POST", SESSIONS) == []


def test_checkout_without_the_form_nonce_is_refused(buyer, proxy):
    client, _ = buyer
    response = client.post("/billing/checkout", data={"package": "tokens_100"})
    assert response.status_code == 400
    assert b"reload the page" in response.data
    assert proxy.requests_to("POST", SESSIONS) == []


def test_checkout_requires_the_csrf_token(make_app, proxy):
    app = make_app(STRIPE_API_BASE=proxy.url, WTF_CSRF_ENABLED=True)
    client = app.test_client()
    page = client.get("/auth/register")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    email = f"csrf-{new_id('u')}@example.test"
    client.post(
        "/auth/register",
        data={"email": email, "password": "correct horse battery", "csrf_token": token},
    )
    nonce = form_nonce(client.get("/billing/buy").data)
    refused = client.post("/billing/checkout", data={"package": "tokens_100", "nonce": nonce})
    assert refused.status_code == 400
    assert proxy.requests_to("POST", SESSIONS) == []
    accepted = client.post(
        "/billing/checkout", data={"package": "tokens_100", "nonce": nonce, "csrf_token": token}
    )
    assert accepted.status_code == 303


def test_stripe_unreachable_shows_a_friendly_error(make_app, owner, caplog):
    app = make_app(STRIPE_API_BASE="http://127.0.0.1:9", STRIPE_SECRET_KEY="sk_test_hidden_42")
    client = app.test_client()
    actions = AuthActions(client)
    actions.register()
    nonce = form_nonce(client.get("/billing/buy").data)
    response = client.post("/billing/checkout", data={"package": "tokens_100", "nonce": nonce})
    assert response.status_code == 502
    assert b"could not reach the payment service" in response.data
    assert b"Nothing was charged" in response.data
    assert "APIConnectionError" in caplog.text
    assert "sk_test_hidden_42" not in caplog.text
    count = owner.execute(
        "select count(*) as n from api.checkout_sessions where user_id = %s",
        [actions.user_id(owner)],
    ).fetchone()
    assert count["n"] == 0


def start_checkout(client) -> None:
    """Go through Buy → Checkout, as a browser would."""
    nonce = form_nonce(client.get("/billing/buy").data)
    response = client.post("/billing/checkout", data={"package": "tokens_100", "nonce": nonce})
    assert response.status_code == 303


def test_success_page_for_an_unpaid_session_says_processing(buyer, proxy, owner):
    client, actions = buyer
    start_checkout(client)
    session_id = owner.execute(
        "select id from api.checkout_sessions where user_id = %s", [actions.user_id(owner)]
    ).fetchone()["id"]

    page = client.get(f"/billing/success?session_id={session_id}")

    # stripe-mock's session fixture is 'unpaid' (as a bank debit would be before it clears).
    assert page.status_code == 200
    assert b"Payment processing" in page.data
    assert b"Your tokens arrive as soon as it clears" in page.data
    [retrieve] = proxy.requests_to("GET", f"{SESSIONS}/{session_id}")
    assert retrieve.form["expand[0]"] == "payment_intent.latest_charge"
    row = owner.execute(
        "select payment_status from api.checkout_sessions where id = %s", [session_id]
    ).fetchone()
    assert row["payment_status"] == "unpaid"
    assert balance_of(owner, actions.user_id(owner)) == 0


def test_success_page_hides_another_users_session(shop, buyer, proxy, owner):
    client, _ = buyer
    start_checkout(client)
    [session] = owner.execute(
        "select s.id from api.checkout_sessions s join api.accounts a on a.id = s.user_id"
        " where a.email = %s",
        [buyer[1].email],
    ).fetchall()
    intruder = shop.test_client()
    AuthActions(intruder).register()
    proxy.clear()

    page = intruder.get(f"/billing/success?session_id={session['id']}")

    assert page.status_code == 404
    assert session["id"].encode() not in page.data
    assert proxy.requests == []  # not even a Stripe lookup for it


@pytest.mark.parametrize("session_id", ["cs_test_never_recorded", "not-a-session", ""])
def test_success_page_for_unknown_sessions_is_404(buyer, proxy, session_id):
    client, _ = buyer
    assert client.get(f"/billing/success?session_id={session_id}").status_code == 404
    assert proxy.requests == []


def test_cancel_page_says_nothing_was_charged(buyer):
    client, _ = buyer
    page = client.get("/billing/cancel?package=tokens_100")
    assert page.status_code == 200
    assert b"Nothing was charged" in page.data
    assert b'href="/billing/buy"' in page.data


def test_paid_session_fulfilment_grants_once(app_conn, webhook_conn, owner, make_user):
    """The success page's service on a paid session (stripe-mock cannot return one)."""
    user = make_user()
    session = checkout_session_object(
        user,
        "tokens_100",
        500,
        charge={"id": new_id("ch"), "object": "charge", "receipt_url": "https://pay.example/r"},
    )
    app_conn.execute(
        "select api.record_checkout_session(%s, %s, 'tokens_100', null)", [session["id"], user]
    )
    first = fulfil_session(webhook_conn, json.dumps(session), user)
    again = fulfil_session(webhook_conn, json.dumps(session), user)

    assert grant_verdict(first) == "granted"
    assert (first["tokens"], first["balance"], first["receipt_url"]) == (
        100,
        100,
        "https://pay.example/r",
    )
    assert grant_verdict(again) == "already granted"
    assert balance_of(owner, user) == 100
    assert owner.execute("select * from api.ledger_audit()").fetchall() == []


# --------------------------------------------------------------------------------------------
# The paid path end to end, with the stateful Checkout emulator standing in for Stripe
# (stripe-mock cannot return a paid session).
# --------------------------------------------------------------------------------------------
CARD = {"card_number": "4242 4242 4242 4242", "expiry": "12 / 34", "cvc": "123"}


def assert_granted_once(owner, user) -> None:
    """Exactly one purchase in the user's ledger, and every balance agrees with its ledger."""
    grants = owner.execute(
        "select count(*) as n from api.ledger_entries where user_id = %s and kind = 'purchase'",
        [user],
    ).fetchone()
    assert grants["n"] == 1
    assert owner.execute("select * from api.ledger_audit()").fetchall() == []


@contextmanager
def bought_and_paid(
    make_app, *, webhooks: bool, card: dict[str, str] = CARD, **config: Any
) -> Iterator[tuple[Any, AuthActions, str]]:
    """Checkout through our view, pay on the emulator's page; yields (client, auth, session)."""
    from workshop.emulator import EmulatorConfig, EmulatorServer

    app = make_app(**config)
    with serve(app) as shop_url:
        config = EmulatorConfig(
            webhook_url=f"{shop_url}/api/webhook/stripe" if webhooks else None,
            webhook_secret=WEBHOOK_SECRET,
            webhook_backoff=0.01,
        )
        with EmulatorServer(config) as emulator:
            app.config.update(STRIPE_API_BASE=emulator.url, PUBLIC_BASE_URL=shop_url)
            client = app.test_client()
            actions = AuthActions(client)
            actions.register()
            nonce = form_nonce(client.get("/billing/buy").data)
            to_stripe = client.post(
                "/billing/checkout", data={"package": "tokens_250", "nonce": nonce}
            )
            assert to_stripe.status_code == 303
            paid = requests.post(
                to_stripe.headers["Location"], data=card, allow_redirects=False, timeout=30
            )
            assert paid.status_code == 303
            back = urlsplit(paid.headers["Location"])
            assert back.path == "/billing/success"
            yield client, actions, parse_qs(back.query)["session_id"][0]


def test_success_page_grants_when_the_webhook_has_not_arrived(make_app, owner):
    with bought_and_paid(make_app, webhooks=False) as (client, actions, session_id):
        user = actions.user_id(owner)
        assert balance_of(owner, user) == 0

        page = client.get(f"/billing/success?session_id={session_id}")
        again = client.get(f"/billing/success?session_id={session_id}")

    assert page.status_code == 200
    html = page.data.decode()
    assert '<strong id="tokens-added">250</strong>' in html
    assert '<strong id="new-balance">250</strong>' in html
    assert 'data-balance="250"' in html  # the header shows the new balance too
    assert "View your receipt" in html
    assert again.status_code == 200 and 'id="new-balance">250<' in again.data.decode()
    assert balance_of(owner, user) == 250
    assert_granted_once(owner, user)


def test_success_page_after_the_webhook_shows_the_same_single_grant(make_app, owner):
    with bought_and_paid(make_app, webhooks=True) as (client, actions, session_id):
        user = actions.user_id(owner)
        assert balance_of(owner, user) == 250  # the emulator delivered before redirecting
        page = client.get(f"/billing/success?session_id={session_id}")

    assert page.status_code == 200
    assert '<strong id="tokens-added">250</strong>' in page.data.decode()
    assert balance_of(owner, user) == 250
    # The emulator delivers in random order: whichever of the session and PaymentIntent
    # events came first granted, the other found the payment already granted.
    intent = owner.execute(
        "select payment_intent_id from api.checkout_sessions where id = %s", [session_id]
    ).fetchone()["payment_intent_id"]
    details = sorted(
        row["detail"]
        for row in owner.execute(
            "select detail from api.stripe_events"
            " where type in ('checkout.session.completed', 'payment_intent.succeeded')"
            " and (payload #>> '{data,object,id}' = %s or payload #>> '{data,object,id}' = %s)",
            [session_id, intent],
        )
    )
    assert details == ["already_granted 250 tokens", "granted 250 tokens"]
    assert_granted_once(owner, user)


def test_refunds_through_the_emulator_take_tokens_back_end_to_end(make_app, owner):
    """Pay, then refund half and the rest with the real SDK; charge.refunded claws back."""
    with bought_and_paid(make_app, webhooks=True) as (client, actions, session_id):
        user = actions.user_id(owner)
        assert balance_of(owner, user) == 250
        charge = owner.execute(
            "select charge_id from api.purchases where checkout_session_id = %s", [session_id]
        ).fetchone()["charge_id"]
        stripe_client = stripe.StripeClient(
            "sk_test_emulator", base_addresses={"api": client.application.config["STRIPE_API_BASE"]}
        )
        stripe_client.v1.refunds.create(params={"charge": charge, "amount": 500})
        assert balance_of(owner, user) == 125  # half of $10 back: half of 250 tokens
        stripe_client.v1.refunds.create(params={"charge": charge})
        assert balance_of(owner, user) == 0
        history = client.get("/history/").data.decode()

    assert "refunded" in history
    kinds = owner.execute(
        "select kind, delta from api.ledger_entries where user_id = %s order by id", [user]
    ).fetchall()
    assert [(k["kind"], k["delta"]) for k in kinds] == [
        ("purchase", 250),
        ("clawback", -125),
        ("clawback", -125),
    ]
    assert owner.execute("select * from api.ledger_audit()").fetchall() == []


def test_checkout_session_creation_is_rate_limited_per_account(make_app, proxy, owner):
    """The audit created 60 sessions in 0.6 s; each is a Stripe API call and a database row."""
    app = make_app(
        STRIPE_API_BASE=proxy.url, RATELIMIT_ENABLED=True, CHECKOUT_RATE_LIMIT="3 per minute"
    )
    client = app.test_client()
    actions = AuthActions(client)
    actions.register()
    codes = []
    for i in range(5):
        nonce = f"nonce-rate-limit-{i:04d}-{actions.email[:8]}"
        response = client.post("/billing/checkout", data={"package": "tokens_100", "nonce": nonce})
        codes.append(response.status_code)
    assert codes == [303, 303, 303, 429, 429]
    assert len(proxy.requests_to("POST", SESSIONS)) == 3
    recorded = owner.execute(
        "select count(*) as n from api.checkout_sessions where user_id = %s",
        [actions.user_id(owner)],
    ).fetchone()
    assert recorded["n"] == 3

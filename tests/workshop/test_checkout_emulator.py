"""The checkout emulator, driven as a real HTTP server by the real stripe SDK.

Webhooks go to a real HTTP receiver that verifies every delivery with
``stripe.Webhook.construct_event``, exactly like the app's endpoint does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from tests.support.emulator import (
    CARD,
    SECRET,
    SUCCESS_EVENTS,
    USER_ID,
    Receiver,
    create,
    pay,
    session_params,
)
from workshop.emulator import EmulatorServer
from workshop.emulator.wire import ParamError, format_amount, parse_params, split_key
from workshop.net import free_port

REPO = Path(__file__).resolve().parents[2]
DECLINED = {**CARD, "card_number": "4000 0000 0000 0002"}


# --------------------------------------------------------------------------- parser units


def test_split_key_handles_brackets() -> None:
    assert split_key("line_items[0][price_data][unit_amount]") == [
        "line_items",
        "0",
        "price_data",
        "unit_amount",
    ]
    assert split_key("expand[]") == ["expand", ""]
    assert split_key("mode") == ["mode"]


@pytest.mark.parametrize("key", ["", "[a]", "a[b", "a]b", "a[b]c", "a[[b]]"])
def test_split_key_rejects_malformed_names(key: str) -> None:
    with pytest.raises(ParamError):
        split_key(key)


def test_parse_params_builds_nested_lists_and_dicts() -> None:
    pairs = [
        ("mode", "payment"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "500"),
        ("line_items[0][price_data][product_data][name]", "100 tokens"),
        ("line_items[0][quantity]", "1"),
        ("line_items[1][price]", "price_x"),
        ("line_items[1][quantity]", "2"),
        ("metadata[user_id]", "u1"),
        ("payment_intent_data[metadata][package]", "tokens_100"),
        ("expand[0]", "payment_intent"),
        ("expand[1]", "payment_intent.latest_charge"),
        ("created[gte]", "17"),
    ]
    assert parse_params(pairs) == {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "500",
                    "product_data": {"name": "100 tokens"},
                },
                "quantity": "1",
            },
            {"price": "price_x", "quantity": "2"},
        ],
        "metadata": {"user_id": "u1"},
        "payment_intent_data": {"metadata": {"package": "tokens_100"}},
        "expand": ["payment_intent", "payment_intent.latest_charge"],
        "created": {"gte": "17"},
    }


def test_parse_params_orders_indices_numerically_and_appends_brackets() -> None:
    pairs = [("a[10]", "ten"), ("a[2]", "two"), ("expand[]", "x"), ("expand[]", "y")]
    assert parse_params(pairs) == {"a": ["two", "ten"], "expand": ["x", "y"]}


def test_parse_params_keeps_numeric_metadata_keys_as_a_dict() -> None:
    pairs = [("metadata[0]", "zero"), ("payment_intent_data[metadata][1]", "one")]
    assert parse_params(pairs) == {
        "metadata": {"0": "zero"},
        "payment_intent_data": {"metadata": {"1": "one"}},
    }


def test_parse_params_round_trips_what_stripe_python_sends() -> None:
    params = {
        "line_items": [{"price_data": {"unit_amount": 500, "currency": "usd"}, "quantity": 1}],
        "metadata": {"user_id": "u"},
        "expand": ["payment_intent"],
        "flag": True,
    }
    pairs = [(k, str(v)) for k, v in stripe._encode._api_encode(params)]
    assert parse_params(pairs) == {
        "line_items": [{"price_data": {"unit_amount": "500", "currency": "usd"}, "quantity": "1"}],
        "metadata": {"user_id": "u"},
        "expand": ["payment_intent"],
        "flag": "true",
    }


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "1"), ("a[b]", "2")],
        [("a[b]", "2"), ("a", "1")],
        [("a[]", "1"), ("a[0]", "2")],
        [("a[0]", "1"), ("a[]", "2")],
        [("a[][b]", "1")],
    ],
)
def test_parse_params_rejects_conflicting_shapes(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ParamError):
        parse_params(pairs)


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (500, "usd", "$5.00"),
        (123456, "eur", "€1,234.56"),
        (500, "jpy", "500 JPY"),
        (7, "chf", "0.07 CHF"),
    ],
)
def test_format_amount(amount: int, currency: str, text: str) -> None:
    assert format_amount(amount, currency) == text


# --------------------------------------------------------------------------- live servers


def test_create_session_answers_a_stripe_shaped_open_session(
    client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    session = create(client)
    assert re.fullmatch(r"cs_test_\w+", session.id)
    assert session.object == "checkout.session"
    assert session.url == f"{emulator.url}/pay/{session.id}"
    assert (session.amount_total, session.currency) == (500, "usd")
    assert (session.status, session.payment_status, session.mode) == ("open", "unpaid", "payment")
    assert session.payment_intent is None
    assert session.client_reference_id == USER_ID
    assert session.metadata.to_dict() == {
        "user_id": USER_ID,
        "package": "tokens_100",
        "tokens": "100",
    }
    assert session.customer_email == "buyer@example.com"
    assert session.success_url.endswith("session_id={CHECKOUT_SESSION_ID}")
    assert session.livemode is False
    assert session.created <= time.time() < session.expires_at


def test_create_with_a_known_price_id(client: stripe.StripeClient) -> None:
    session = create(client, line_items=[{"price": "price_tokens_250", "quantity": 2}])
    assert session.amount_total == 2000
    items = client.v1.checkout.sessions.line_items.list(session.id)
    assert items.data[0].price.id == "price_tokens_250"
    assert items.data[0].quantity == 2


@pytest.mark.parametrize(
    ("overrides", "param", "message"),
    [
        ({"mode": None}, "mode", "Missing required param: mode."),
        ({"mode": "subscription"}, "mode", "only supports mode=payment"),
        ({"line_items": None}, "line_items", "Missing required param: line_items."),
        ({"success_url": "not a url"}, "success_url", "Not a valid URL"),
        ({"customer_email": "nope"}, "customer_email", "Invalid email address"),
        ({"colour": "red"}, "colour", "Received unknown parameter: colour"),
        (
            {"line_items": [{"price": "price_nope", "quantity": 1}]},
            "line_items[0][price]",
            "No such price: 'price_nope'",
        ),
        (
            {"line_items": [{"price_data": {"currency": "usd", "unit_amount": 500}}]},
            "line_items[0][quantity]",
            "Missing required param",
        ),
        (
            {
                "line_items": [
                    {
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": "lots",
                            "product_data": {"name": "x"},
                        },
                        "quantity": 1,
                    }
                ]
            },
            "line_items[0][price_data][unit_amount]",
            "Invalid integer: lots",
        ),
    ],
)
def test_create_rejects_bad_params_in_stripes_error_shape(
    client: stripe.StripeClient, overrides: dict[str, Any], param: str, message: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        create(client, **overrides)
    assert info.value.http_status == 400
    assert info.value.param == param
    assert message in info.value.user_message


def test_idempotency_key_replays_the_same_session(client: stripe.StripeClient) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "buy-1"}
    first = client.v1.checkout.sessions.create(params=session_params(), options=options)
    again = client.v1.checkout.sessions.create(params=session_params(), options=options)
    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    other = client.v1.checkout.sessions.create(
        params=session_params(), options={"idempotency_key": "buy-2"}
    )
    assert other.id != first.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.checkout.sessions.create(
            params=session_params(client_reference_id="someone-else"), options=options
        )


def test_unknown_session_is_a_stripe_404(
    client: stripe.StripeClient, emulator: EmulatorServer
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.checkout.sessions.retrieve("cs_test_missing")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"
    raw = requests.get(
        f"{emulator.url}/v1/checkout/sessions/cs_test_missing",
        headers={"Authorization": "Bearer sk_test_x"},
        timeout=10,
    )
    assert raw.status_code == 404
    assert raw.json() == {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "param": "id",
            "message": "No such checkout.session: 'cs_test_missing'",
        }
    }


def test_unknown_route_is_a_stripe_404(emulator: EmulatorServer) -> None:
    raw = requests.get(f"{emulator.url}/v1/customers", auth=("sk_test_x", ""), timeout=10)
    assert raw.status_code == 404
    assert raw.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "You did not provide an API key"),
        ({"Authorization": "Bearer sk_live_real"}, "only accepts test-mode secret keys"),
        ({"Authorization": "Bearer pk_test_publishable"}, "only accepts test-mode secret keys"),
    ],
)
def test_api_requires_a_test_secret_key(
    emulator: EmulatorServer, headers: dict[str, str], message: str
) -> None:
    raw = requests.get(f"{emulator.url}/v1/checkout/sessions", headers=headers, timeout=10)
    assert raw.status_code == 401
    assert raw.json()["error"]["type"] == "invalid_request_error"
    assert message in raw.json()["error"]["message"]
    assert "sk_live_real" not in raw.text  # keys are never echoed


def test_live_key_is_refused_through_the_sdk(emulator: EmulatorServer) -> None:
    live = stripe.StripeClient("sk_live_x", base_addresses={"api": emulator.url})
    with pytest.raises(stripe.AuthenticationError):
        live.v1.checkout.sessions.list()


def test_basic_auth_works_like_curl_u(emulator: EmulatorServer) -> None:
    raw = requests.get(
        f"{emulator.url}/v1/checkout/sessions", auth=("sk_test_emulator", ""), timeout=10
    )
    assert raw.status_code == 200
    assert raw.json()["object"] == "list"


def test_pay_page_shows_the_order_and_test_card_form(client: stripe.StripeClient) -> None:
    session = create(client)
    page = requests.get(session.url, timeout=10)
    assert page.status_code == 200
    assert "Simulated Stripe Checkout" in page.text
    assert "100 agent tokens" in page.text
    assert "$5.00" in page.text
    assert "buyer@example.com" in page.text
    for name in ("card_number", "expiry", "cvc"):
        assert f'name="{name}"' in page.text
    assert 'href="http://shop.test/billing/buy?cancelled=1"' in page.text


def test_successful_payment_delivers_signed_events_then_redirects(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    resp = pay(session)

    assert resp.status_code == 303
    assert resp.headers["Location"] == (f"http://shop.test/billing/success?session_id={session.id}")
    # Delivered synchronously before the redirect: three types, one of them twice.
    assert len(receiver.events) == 4
    assert set(receiver.types()) == SUCCESS_EVENTS
    ids = [e.id for e in receiver.events]
    assert len(set(ids)) == 3
    for event in receiver.events:
        assert event.object == "event"
        assert re.fullmatch(r"evt_\w+", event.id)
        assert event.livemode is False
        assert event.api_version == stripe.api_version

    completed = receiver.of_type("checkout.session.completed")[0].data.object
    assert completed.id == session.id
    assert (completed.status, completed.payment_status) == ("complete", "paid")
    assert completed.client_reference_id == USER_ID
    assert completed.metadata.package == "tokens_100"
    pi_event = receiver.of_type("payment_intent.succeeded")[0].data.object
    assert completed.payment_intent == pi_event.id
    assert pi_event.amount_received == 500
    assert pi_event.metadata.to_dict() == {
        "user_id": USER_ID,
        "package": "tokens_100",
        "tokens": "100",
    }
    charge_event = receiver.of_type("charge.succeeded")[0].data.object
    assert charge_event.payment_intent == pi_event.id
    assert pi_event.latest_charge == charge_event.id

    done = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["payment_intent.latest_charge"]}
    )
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert done.payment_intent.id == pi_event.id
    assert done.payment_intent.status == "succeeded"
    charge = done.payment_intent.latest_charge
    assert (charge.id, charge.amount, charge.amount_refunded) == (charge_event.id, 500, 0)
    assert charge.receipt_url.endswith(f"/receipts/{charge.id}")
    receipt = requests.get(charge.receipt_url, timeout=10)
    assert receipt.status_code == 200
    assert "$5.00" in receipt.text


def test_retrieve_expands_payment_intent_and_line_items(client: stripe.StripeClient) -> None:
    session = create(client)
    pay(session)
    pi_only = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["payment_intent"]}
    )
    assert pi_only.payment_intent.object == "payment_intent"
    assert isinstance(pi_only.payment_intent.latest_charge, str)
    plain = client.v1.checkout.sessions.retrieve(session.id)
    assert isinstance(plain.payment_intent, str)
    with_items = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]})
    assert with_items.line_items.data[0].description == "100 agent tokens"
    assert with_items.line_items.data[0].amount_total == 500
    pi = client.v1.payment_intents.retrieve(plain.payment_intent)
    assert pi.metadata["user_id"] == USER_ID
    charge = client.v1.charges.retrieve(pi.latest_charge, params={"expand": ["payment_intent"]})
    assert charge.payment_intent.id == pi.id
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["customer"]})


def test_list_sessions_filters_by_status_and_created(client: stripe.StripeClient) -> None:
    first = create(client)
    second = create(client)
    pay(second)

    listed = client.v1.checkout.sessions.list()
    assert [s.id for s in listed.data] == [second.id, first.id]  # newest first
    complete = client.v1.checkout.sessions.list(params={"status": "complete"})
    assert [s.id for s in complete.data] == [second.id]
    open_ = client.v1.checkout.sessions.list(params={"status": "open"})
    assert [s.id for s in open_.data] == [first.id]
    assert client.v1.checkout.sessions.list(params={"created": {"gte": first.created}}).data
    later = client.v1.checkout.sessions.list(params={"created": {"gt": second.created + 10}})
    assert later.data == []
    page = client.v1.checkout.sessions.list(params={"limit": 1})
    assert ([s.id for s in page.data], page.has_more) == ([second.id], True)
    rest = client.v1.checkout.sessions.list(params={"limit": 1, "starting_after": second.id})
    assert ([s.id for s in rest.data], rest.has_more) == ([first.id], False)
    paged = client.v1.checkout.sessions.list(params={"limit": 1}).auto_paging_iter()
    assert [s.id for s in paged] == [second.id, first.id]
    expanded = client.v1.checkout.sessions.list(
        params={"status": "complete", "expand": ["data.payment_intent"]}
    )
    assert expanded.data[0].payment_intent.status == "succeeded"


def test_declined_card_stays_on_the_page_and_sends_payment_failed(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    resp = pay(session, **DECLINED)

    assert resp.status_code == 402
    assert "Your card was declined." in resp.text
    assert receiver.types() == ["charge.failed", "payment_intent.payment_failed"]
    failed = receiver.of_type("payment_intent.payment_failed")[0].data.object
    assert failed.metadata["user_id"] == USER_ID
    assert failed.metadata["package"] == "tokens_100"
    assert failed.last_payment_error.code == "card_declined"
    still = client.v1.checkout.sessions.retrieve(session.id)
    assert (still.status, still.payment_status) == ("open", "unpaid")

    # A second try with a good card pays the same PaymentIntent.
    receiver.clear()
    assert pay(session).status_code == 303
    assert set(receiver.types()) == SUCCESS_EVENTS
    assert receiver.of_type("payment_intent.succeeded")[0].data.object.id == failed.id


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({**CARD, "card_number": "5555 5555 5555 4444"}, "Use a test card: 4242 4242 4242 4242"),
        ({**CARD, "card_number": ""}, "Use a test card: 4242 4242 4242 4242"),
        ({**CARD, "expiry": "13 / 30"}, "expiration date is incomplete"),
        ({**CARD, "expiry": "01 / 20"}, "expiration date is in the past"),
        ({**CARD, "cvc": "1"}, "security code is incomplete"),
    ],
)
def test_bad_card_details_are_rejected_without_events(
    client: stripe.StripeClient, receiver: Receiver, form: dict[str, str], message: str
) -> None:
    session = create(client)
    resp = pay(session, **form)
    assert resp.status_code == 400
    assert message in resp.text
    assert receiver.events == []
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"


def test_page_asks_for_an_email_when_the_session_has_none(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    params = session_params()
    del params["customer_email"]
    session = client.v1.checkout.sessions.create(params=params)
    assert 'name="email"' in requests.get(session.url, timeout=10).text
    assert "Enter a valid email address." in pay(session, **CARD).text
    assert pay(session, **CARD, email="typed@example.com").status_code == 303
    done = client.v1.checkout.sessions.retrieve(session.id)
    assert done.customer_details.email == "typed@example.com"


def test_completed_session_page_says_so_and_cannot_pay_twice(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    pay(session)
    receiver.clear()
    page = requests.get(session.url, timeout=10)
    assert page.status_code == 410
    assert "This checkout session is complete" in page.text
    assert pay(session).status_code == 410
    assert receiver.events == []


def test_expire_endpoint_closes_the_session(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    expired = client.v1.checkout.sessions.expire(session.id)
    assert (expired.status, expired.url) == ("expired", None)
    assert receiver.types() == ["checkout.session.expired"]
    page = requests.get(session.url, timeout=10)
    assert page.status_code == 410
    assert "expired" in page.text
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)


def test_sessions_expire_at_expires_at(
    client: stripe.StripeClient, emulator: EmulatorServer, receiver: Receiver
) -> None:
    session = create(client, expires_at=int(time.time()) + 1800)
    emulator.emulator.clock = lambda: session.expires_at + 1
    assert client.v1.checkout.sessions.retrieve(session.id).status == "expired"
    assert receiver.types() == ["checkout.session.expired"]


def test_refunds_emit_charge_refunded_with_cumulative_amounts(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    pay(session)
    charge_id = receiver.of_type("charge.succeeded")[0].data.object.id
    receiver.clear()

    partial = client.v1.refunds.create(params={"charge": charge_id, "amount": 200})
    assert (partial.object, partial.amount, partial.status) == ("refund", 200, "succeeded")
    refunded = receiver.of_type("charge.refunded")
    assert len(refunded) == 1
    assert refunded[0].data.object.amount_refunded == 200
    assert refunded[0].data.object.refunded is False
    assert refunded[0].data.object.metadata["user_id"] == USER_ID

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge_id, "amount": 301})
    assert too_much.value.code == "amount_too_large"

    receiver.clear()
    pi_id = client.v1.charges.retrieve(charge_id).payment_intent
    rest = client.v1.refunds.create(params={"payment_intent": pi_id})
    assert rest.amount == 300
    final = receiver.of_type("charge.refunded")[0].data.object
    assert (final.amount_refunded, final.refunded) == (500, True)
    assert client.v1.charges.retrieve(charge_id).amount_refunded == 500

    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"charge": charge_id})
    assert again.value.code == "charge_already_refunded"


def test_refund_needs_a_succeeded_charge(client: stripe.StripeClient, receiver: Receiver) -> None:
    session = create(client)
    pay(session, **DECLINED)
    failed_pi = receiver.of_type("payment_intent.payment_failed")[0].data.object
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"payment_intent": failed_pi.id})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"charge": failed_pi.latest_charge})
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.refunds.create(params={"charge": "ch_missing"})
    assert missing.value.http_status == 404


def test_refund_by_curl_style_basic_auth(
    client: stripe.StripeClient, emulator: EmulatorServer, receiver: Receiver
) -> None:
    session = create(client)
    pay(session)
    charge_id = receiver.of_type("charge.succeeded")[0].data.object.id
    resp = requests.post(
        f"{emulator.url}/v1/refunds",
        auth=("sk_test_emulator", ""),
        data={"charge": charge_id},
        timeout=30,
    )
    assert resp.status_code == 200
    assert resp.json()["amount"] == 500


def test_failed_deliveries_are_retried(client: stripe.StripeClient, receiver: Receiver) -> None:
    receiver.fail_first = 1
    session = create(client)
    assert pay(session).status_code == 303
    assert set(receiver.types()) == SUCCESS_EVENTS
    # Every event was refused once, then accepted (the duplicate is accepted straight away).
    assert sorted(receiver.attempts.values()) == [2, 2, 3]


def test_events_are_listed_and_retrievable(client: stripe.StripeClient) -> None:
    session = create(client)
    pay(session)
    events = client.v1.events.list(params={"type": "checkout.session.completed"})
    assert [e.data.object["id"] for e in events.data] == [session.id]
    again = client.v1.events.retrieve(events.data[0].id)
    assert again.type == "checkout.session.completed"


def test_cli_serves_with_the_flags_scripts_run_uses(receiver: Receiver) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workshop.emulator",
            "--port",
            str(port),
            "--webhook-url",
            receiver.url,
        ],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "STRIPE_WEBHOOK_SECRET": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": url})
        session = create(client)
        assert session.url == f"{url}/pay/{session.id}"
        assert pay(session).status_code == 303
        assert set(receiver.types()) == SUCCESS_EVENTS
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"whsec_" not in err  # the secret is never logged


# --------------------------------------------------------------------------- with the real app


def test_a_purchase_and_refund_through_the_real_app(
    make_app: Any, owner: Any, emulator: EmulatorServer
) -> None:
    """The app's own Checkout, success page and webhook code accept what the emulator sends."""
    from tests.conftest import PASSWORD, audit, balance_of
    from tests.support.servers import serve

    app = make_app(
        STRIPE_API_BASE=emulator.url,
        STRIPE_SECRET_KEY="sk_test_emulator",
        STRIPE_WEBHOOK_SECRET=SECRET,
        PUBLIC_BASE_URL="",
        PAYMENTS_SIMULATED=True,
    )
    with serve(app) as app_url:
        emulator.emulator.config.webhook_url = f"{app_url}/api/webhook/stripe"
        browser = requests.Session()
        email = f"emulator-{time.time_ns()}@example.test"
        browser.post(f"{app_url}/auth/register", data={"email": email, "password": PASSWORD})
        buy = browser.get(f"{app_url}/billing/buy", timeout=10)
        nonce = re.search(r'name="nonce" value="([^"]+)"', buy.text)
        assert nonce, "not logged in, or the buy page changed"
        checkout = browser.post(
            f"{app_url}/billing/checkout",
            data={"package": "tokens_100", "nonce": nonce.group(1)},
            allow_redirects=False,
            timeout=30,
        )
        assert checkout.status_code == 303
        pay_url = checkout.headers["Location"]
        assert pay_url.startswith(f"{emulator.url}/pay/cs_test_")
        assert email in browser.get(pay_url, timeout=10).text

        paid = browser.post(pay_url, data=CARD, allow_redirects=False, timeout=30)
        assert paid.status_code == 303
        assert paid.headers["Location"].startswith(f"{app_url}/billing/success?session_id=")
        assert browser.get(paid.headers["Location"], timeout=30).status_code == 200

        user = owner.execute("select id from api.accounts where email = %s", [email]).fetchone()
        assert balance_of(owner, user["id"]) == 100
        sent = list(emulator.emulator.events)
        outcomes = owner.execute(
            "select type, outcome from api.stripe_events where id = any(%s)", [sent]
        ).fetchall()
        assert {row["type"] for row in outcomes} == SUCCESS_EVENTS  # the duplicate is one row
        assert len(outcomes) == 3
        assert {row["outcome"] for row in outcomes} <= {"processed", "ignored"}

        (charge,) = [c for c in emulator.emulator.charges.values() if c["receipt_email"] == email]
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": emulator.url})
        client.v1.refunds.create(params={"charge": charge["id"]})
        assert balance_of(owner, user["id"]) == 0
        assert audit(owner) == []

"""The hosted pay page: paying, declines, bad details, retrieval, listing, expiry.

Webhooks go to a real HTTP receiver that verifies every delivery with
``stripe.Webhook.construct_event``, exactly like the app's endpoint does.
"""

from __future__ import annotations

import re
import time

import pytest
import requests
import stripe

from tests.support.emulator import (
    CARD,
    SUCCESS_EVENTS,
    USER_ID,
    Receiver,
    create,
    pay,
    pay_declined,
    session_params,
)
from workshop.emulator import EmulatorServer

DECLINED = {**CARD, "card_number": "4000 0000 0000 0002"}


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
    pay_declined(session, receiver, DECLINED, "Your card was declined.")
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

"""The seed's other test cards on the emulator: insufficient funds and 3-D Secure (3155).

Each must send the events Stripe sends for it, with tokenbill's metadata, and leave the
Checkout Session in the state Stripe leaves it in.
"""

from __future__ import annotations

import re
from pathlib import Path

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
    pay_declined,
)
from workshop.emulator import DEFAULT_ENABLED_EVENTS, EmulatorConfig, EmulatorServer
from workshop.emulator.cards import AUTHENTICATION_FAILED, CARDS

INSUFFICIENT = {**CARD, "card_number": "4000 0000 0000 9995"}
SECURE = {**CARD, "card_number": "4000 0025 0000 3155"}


def test_the_pay_page_lists_every_test_card(client: stripe.StripeClient) -> None:
    page = requests.get(create(client).url, timeout=10).text
    for card in CARDS.values():
        assert card.spaced in page
    assert len(CARDS) == 4


def test_insufficient_funds_declines_with_stripes_codes_and_events(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    pay_declined(session, receiver, INSUFFICIENT, "Your card has insufficient funds.")
    charge = receiver.of_type("charge.failed")[0].data.object
    intent = receiver.of_type("payment_intent.payment_failed")[0].data.object
    assert (charge.status, charge.paid, charge.failure_code) == ("failed", False, "card_declined")
    assert charge.outcome.reason == "insufficient_funds"
    assert charge.payment_intent == intent.id and intent.latest_charge == charge.id
    error = intent.last_payment_error
    assert (error.type, error.code, error.decline_code) == (
        "card_error",
        "card_declined",
        "insufficient_funds",
    )
    assert intent.status == "requires_payment_method"
    assert intent.metadata.to_dict() == {
        "user_id": USER_ID,
        "package": "tokens_100",
        "tokens": "100",
    }
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"


def challenge(session: stripe.checkout.Session) -> str:
    """Pay with 3155 and follow the redirect: the challenge page's URL."""
    resp = pay(session, **SECURE)
    assert resp.status_code == 303
    url = requests.compat.urljoin(session.url, resp.headers["Location"])
    assert url.endswith(f"/pay/{session.id}/authenticate")
    return url


def test_3155_asks_for_authentication_then_completing_pays(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    url = challenge(session)

    assert receiver.types() == ["payment_intent.requires_action"]
    waiting = receiver.events[0].data.object
    assert (waiting.status, waiting.next_action.type) == ("requires_action", "use_stripe_sdk")
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "$5.00" in page.text
    assert 'value="complete"' in page.text and 'value="fail"' in page.text
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"  # nothing paid yet

    receiver.clear()
    done = requests.post(url, data={"action": "complete"}, allow_redirects=False, timeout=30)
    assert done.status_code == 303
    assert done.headers["Location"].endswith(f"session_id={session.id}")
    assert set(receiver.types()) == SUCCESS_EVENTS  # the same as a card without 3-D Secure
    paid = receiver.of_type("payment_intent.succeeded")[0].data.object
    assert (paid.id, paid.amount_received, paid.next_action) == (waiting.id, 500, None)
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"
    # the challenge is over: its page sends the buyer back, and it cannot be answered twice
    assert requests.get(url, allow_redirects=False, timeout=10).status_code == 303
    again = requests.post(url, data={"action": "complete"}, allow_redirects=False, timeout=10)
    assert again.status_code == 410


def test_failing_authentication_declines_and_the_buyer_can_pay_again(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    url = challenge(session)
    receiver.clear()

    failed = requests.post(url, data={"action": "fail"}, timeout=30)
    assert failed.status_code == 402
    assert AUTHENTICATION_FAILED["message"] in failed.text
    assert 'id="payment-form"' in failed.text
    # no charge is attempted when authentication fails, so no charge.failed
    assert receiver.types() == ["payment_intent.payment_failed"]
    intent = receiver.events[0].data.object
    assert intent.last_payment_error.code == "payment_intent_authentication_failure"
    assert intent.latest_charge is None and intent.metadata["user_id"] == USER_ID

    receiver.clear()
    assert pay(session).status_code == 303  # 4242 on the same PaymentIntent
    assert receiver.of_type("payment_intent.succeeded")[0].data.object.id == intent.id


def test_a_forged_challenge_answer_changes_nothing(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    """Posting "complete" for a session that never asked for authentication must not pay it."""
    session = create(client)
    url = re.sub(r"/pay/(\w+)$", r"/pay/\1/authenticate", session.url)
    resp = requests.post(url, data={"action": "complete"}, timeout=10)
    assert resp.status_code == 400 and "No authentication is waiting" in resp.text
    assert receiver.events == []
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"


def test_only_the_endpoints_event_types_are_delivered(receiver: Receiver) -> None:
    """By default the emulator delivers what docs/stripe.md selects, as a Stripe endpoint."""
    config = EmulatorConfig(webhook_url=receiver.url, webhook_secret=SECRET, webhook_backoff=0.01)
    with EmulatorServer(config) as server:
        client = stripe.StripeClient(
            "sk_test_x", base_addresses={"api": server.url}, max_network_retries=0
        )
        session = create(client)
        assert pay(session, **INSUFFICIENT).status_code == 402
        challenge(session)
        assert receiver.types() == ["payment_intent.payment_failed"]  # no charge.failed
        created = {e.type for e in client.v1.events.list(params={"limit": 100}).data}
        assert {"charge.failed", "payment_intent.requires_action"} <= created  # yet created


def test_the_default_event_types_are_the_documented_ones() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "stripe.md").read_text()
    section = doc[doc.index("Events to send") : doc.index("Copy the endpoint")]
    assert set(re.findall(r"`([a-z_.]+)`", section)) == DEFAULT_ENABLED_EVENTS

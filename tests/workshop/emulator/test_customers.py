"""Customers, saved cards and off-session PaymentIntents on the emulator (auto top-up offline).

A card paid with on a session with setup_future_usage=off_session is saved to the session's
Customer; off-session charges of it succeed (4242), are declined (0002, 9995) or need
authentication (3155) with the 402s and events Stripe sends.
"""

from __future__ import annotations

import pytest
import requests
import stripe

from tests.support.emulator import CARD, Receiver, create, pay
from workshop.emulator import EmulatorServer
from workshop.emulator.cards import CARDS


def saved(client: stripe.StripeClient, receiver: Receiver, card: dict[str, str]) -> tuple:
    """A customer who paid a session with ``card`` and opted in to saving it."""
    customer = client.v1.customers.create(
        params={"email": "buyer@example.com"}, options={"idempotency_key": "cust-1"}
    )
    session = create(
        client,
        customer=customer.id,
        customer_email=None,
        payment_intent_data={"metadata": {"user_id": "u"}, "setup_future_usage": "off_session"},
    )
    assert pay(session, **card).status_code == 303
    receiver.clear()
    [pm] = client.v1.payment_methods.list(params={"customer": customer.id, "type": "card"}).data
    return customer, pm


def off_session(client: stripe.StripeClient, customer: str, pm: str, key: str = "topup-1"):
    return client.v1.payment_intents.create(
        params={
            "amount": 500,
            "currency": "usd",
            "customer": customer,
            "payment_method": pm,
            "confirm": True,
            "off_session": True,
            "metadata": {"user_id": "u", "package": "tokens_100", "topup_id": "1"},
        },
        options={"idempotency_key": key},
    )


def test_a_customer_is_created_once_per_idempotency_key(client: stripe.StripeClient) -> None:
    first = client.v1.customers.create(params={"email": "a@b.c"}, options={"idempotency_key": "k"})
    again = client.v1.customers.create(params={"email": "a@b.c"}, options={"idempotency_key": "k"})
    assert first.id == again.id and first.id.startswith("cus_")


def test_saved_card_is_listed_charged_off_session_and_detached(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    customer, pm = saved(client, receiver, CARD)
    assert (pm.card.brand, pm.card.last4, pm.card.exp_year) == ("visa", "4242", 2034)

    intent = off_session(client, customer.id, pm.id)
    assert (intent.status, intent.customer, intent.metadata["topup_id"]) == (
        "succeeded",
        customer.id,
        "1",
    )
    assert off_session(client, customer.id, pm.id).id == intent.id  # same key, same intent
    receiver_types = receiver.types()
    assert receiver_types == ["charge.succeeded", "payment_intent.succeeded"]

    client.v1.payment_methods.detach(pm.id)
    assert client.v1.payment_methods.list(params={"customer": customer.id}).data == []
    with pytest.raises(stripe.InvalidRequestError):
        off_session(client, customer.id, pm.id, key="topup-2")


def test_a_card_without_the_opt_in_is_not_saved(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(params={"email": "buyer@example.com"})
    pay(create(client, customer=customer.id, customer_email=None))
    assert client.v1.payment_methods.list(params={"customer": customer.id}).data == []


def saved_test_card(emulator: EmulatorServer, client: stripe.StripeClient, number: str) -> tuple:
    """A customer whose saved card is the test card ``number``, as if saved by a Checkout
    payment (only a successful payment saves a card, so the declining cards are saved here)."""
    customer = client.v1.customers.create(params={"email": "buyer@example.com"})
    with emulator.emulator.lock:
        emulator.emulator.save_card(customer.id, f"pm_{number}", CARDS[number], (2034, 12), "b@x.y")
    return customer.id, f"pm_{number}"


@pytest.mark.parametrize(
    ("number", "decline"),
    [("4000000000000002", "generic_decline"), ("4000000000009995", "insufficient_funds")],
)
def test_declined_off_session_charges_are_402_with_the_intent_and_events(
    emulator: EmulatorServer, client: stripe.StripeClient, receiver: Receiver, number, decline
) -> None:
    customer, pm = saved_test_card(emulator, client, number)
    with pytest.raises(stripe.CardError) as info:
        off_session(client, customer, pm)
    error = info.value.json_body["error"]
    assert (error["code"], error["decline_code"]) == ("card_declined", decline)
    assert error["payment_intent"]["status"] == "requires_payment_method"
    assert receiver.types() == ["charge.failed", "payment_intent.payment_failed"]


def test_a_card_needing_3d_secure_is_402_authentication_required(
    emulator: EmulatorServer, client: stripe.StripeClient, receiver: Receiver
) -> None:
    customer, pm = saved_test_card(emulator, client, "4000002500003155")
    with pytest.raises(stripe.CardError) as info:
        off_session(client, customer, pm)
    assert info.value.code == "authentication_required"
    assert info.value.json_body["error"]["payment_intent"]["id"].startswith("pi_")
    assert receiver.types() == ["payment_intent.payment_failed"]


def test_the_promotion_code_lowers_the_total_before_the_intent_is_created(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    plain = create(client)
    assert pay(plain, **CARD, promotion_code="TOKENS20").status_code == 400  # not allowed here

    session = create(client, allow_promotion_codes=True)
    assert "TOKENS20" in requests.get(session.url, timeout=10).text
    assert pay(session, **CARD, promotion_code="NOPE").status_code == 400
    assert pay(session, **CARD, promotion_code="tokens20").status_code == 303
    completed = receiver.of_type("checkout.session.completed")[0].data.object
    assert (completed.amount_subtotal, completed.amount_total) == (500, 400)
    assert completed.total_details.amount_discount == 100
    assert completed.discounts[0].promotion_code == "promo_emulator_tokens20"
    assert receiver.of_type("payment_intent.succeeded")[0].data.object.amount == 400

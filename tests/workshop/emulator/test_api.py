"""The emulator's API, driven as a real HTTP server by the real stripe SDK: sessions, auth."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests
import stripe

from tests.support.emulator import (
    USER_ID,
    create,
    session_params,
)
from workshop.emulator import EmulatorServer

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
    raw = requests.get(f"{emulator.url}/v1/subscriptions", auth=("sk_test_x", ""), timeout=10)
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

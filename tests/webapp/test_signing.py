"""webapp.signing: Stripe's signature scheme, checked against a known vector and the Stripe SDK."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import stripe

from webapp.signing import signature_header


def test_a_known_vector() -> None:
    header = signature_header(b'{"a":1}', "s", timestamp=1700000000)
    expected = hmac.new(b"s", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_the_stripe_sdk_accepts_it_and_refuses_another_secret_or_body() -> None:
    body = b'{"id":"evt_1","object":"event"}'
    header = signature_header(body, "whsec_x")
    assert stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_x", tolerance=60)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_y", tolerance=60)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header('{"id":"evt_2"}', header, "whsec_x", tolerance=60)


def test_the_timestamp_defaults_to_now() -> None:
    t = int(signature_header(b"", "s").split(",")[0].removeprefix("t="))
    assert abs(t - time.time()) < 5

"""Stripe event builders and signing for tests (the same ones workshop.send_event uses).

Typical use::

    evt = checkout_session_completed(user_id, "tokens_100", 500, pi="pi_x", cs="cs_x")
    body = encode(evt)
    client.post(WEBHOOK, data=body, headers={"Stripe-Signature": sign(body, SECRET)})
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webapp.signing import signature_header as sign
from workshop.stripe_fixtures import (
    DEFAULT_AMOUNTS,
    HANDLED_TYPES,
    build,
    charge_object,
    charge_refunded,
    charge_succeeded,
    checkout_session_async_payment_failed,
    checkout_session_async_payment_succeeded,
    checkout_session_completed,
    checkout_session_expired,
    checkout_session_object,
    dispute,
    encode,
    event,
    new_id,
    payment_intent_object,
    payment_intent_payment_failed,
    payment_intent_succeeded,
)

# The project's shared/ folder sits beside the checkout (developers' machines and CI alike).
SHARED_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "stripe-event-fixtures"

__all__ = [
    "DEFAULT_AMOUNTS",
    "HANDLED_TYPES",
    "SHARED_FIXTURES",
    "build",
    "charge_object",
    "charge_refunded",
    "charge_succeeded",
    "checkout_session_async_payment_failed",
    "checkout_session_async_payment_succeeded",
    "checkout_session_completed",
    "checkout_session_expired",
    "checkout_session_object",
    "dispute",
    "encode",
    "event",
    "new_id",
    "payment_intent_object",
    "payment_intent_payment_failed",
    "payment_intent_succeeded",
    "shared_fixture",
    "sign",
    "signed",
    "unverifiable_deliveries",
]


def signed(evt: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    """The body and its Stripe-Signature header."""
    body = encode(evt)
    return body, sign(body, secret, timestamp)


def shared_fixture(name: str) -> dict[str, Any]:
    """A copy of a captured Stripe event from the shared fixtures (shared/ beside the checkout)."""
    path = SHARED_FIXTURES / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the shared Stripe fixtures must sit beside the checkout")
    return copy.deepcopy(json.loads(path.read_text()))


Tamper = Callable[[dict[str, Any]], tuple[bytes, str | None]]


def unverifiable_deliveries(secret: str) -> list[Tamper]:
    """Ways a delivery of an event must be refused (400) before anything is applied.

    Each returns the body and the Stripe-Signature header (None: no header). The event is
    expected to be a tokens_100 checkout for 500 cents (``_altered`` edits the amount).
    """

    def wrong_secret(evt: dict[str, Any]) -> tuple[bytes, str | None]:
        body = encode(evt)
        return body, sign(body, "whsec_not_ours")

    def stale(evt: dict[str, Any]) -> tuple[bytes, str | None]:
        body = encode(evt)
        return body, sign(body, secret, int(time.time()) - 301)

    def altered(evt: dict[str, Any]) -> tuple[bytes, str | None]:
        body = encode(evt)
        header = sign(body, secret)
        return body.replace(b'"amount_total":500', b'"amount_total":50'), header

    def missing(evt: dict[str, Any]) -> tuple[bytes, str | None]:
        return encode(evt), None

    def malformed(evt: dict[str, Any]) -> tuple[bytes, str | None]:
        body = b'{"id": "evt_broken", "type": '
        return body, sign(body, secret)

    def not_an_object(evt: dict[str, Any]) -> tuple[bytes, str | None]:
        body = b'["checkout.session.completed"]'
        return body, sign(body, secret)

    def garbage_header(evt: dict[str, Any]) -> tuple[bytes, str | None]:
        return encode(evt), "t=abc,v1=zzz"

    return [wrong_secret, stale, altered, missing, malformed, not_an_object, garbage_header]

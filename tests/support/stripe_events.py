"""Stripe event builders and signing for tests (the same ones workshop.send_event uses).

Typical use::

    evt = checkout_session_completed(user_id, "tokens_100", 500, pi="pi_x", cs="cs_x")
    body = encode(evt)
    client.post(WEBHOOK, data=body, headers={"Stripe-Signature": sign(body, SECRET)})
"""

from __future__ import annotations

import copy
import json
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

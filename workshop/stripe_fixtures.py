"""Stripe webhook events shaped like the real ones, for tests and ``workshop.send_event``.

Shapes follow Stripe's event fixtures (API 2022-11-15 onward: a PaymentIntent names its
``latest_charge``), trimmed to the fields tokenbill reads plus the usual envelope. Metadata is
what tokenbill's Checkout Sessions set: ``user_id``, ``package``, ``tokens``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

# Re-exported: the fixtures' callers sign what they build with it (webapp/signing.py).
from webapp.signing import signature_header as sign  # noqa: F401

API_VERSION = "2024-06-20"

# Test defaults mirroring migration 0002 (the database stays the source of truth).
DEFAULT_AMOUNTS = {"tokens_100": 500, "tokens_250": 1000, "tokens_600": 2000}
DEFAULT_TOKENS = {"tokens_100": 100, "tokens_250": 250, "tokens_600": 600}

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    """A Stripe-looking id, unique per call."""
    return f"{prefix}_test_{uuid.uuid4().hex[:24]}"


def metadata(user_id: Any, package: str) -> dict[str, str]:
    tokens = DEFAULT_TOKENS.get(package)
    meta = {"user_id": str(user_id), "package": package}
    if tokens is not None:
        meta["tokens"] = str(tokens)
    return meta


def event(
    type_: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
    previous_attributes: dict[str, Any] | None = None,
) -> Event:
    """Wrap an object in Stripe's event envelope."""
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created or int(time.time()),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def checkout_session_object(
    user_id: Any,
    package: str,
    amount: int,
    *,
    cs: str | None = None,
    pi: str | None = None,
    currency: str = "usd",
    payment_status: str = "paid",
    status: str = "complete",
    charge: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Checkout Session as tokenbill creates it; ``charge`` expands payment_intent."""
    pi = pi or new_id("pi")
    payment_intent: str | dict[str, Any] = pi
    if charge is not None:
        payment_intent = {"id": pi, "object": "payment_intent", "latest_charge": charge}
    return {
        "id": cs or new_id("cs"),
        "object": "checkout.session",
        "amount_subtotal": amount,
        "amount_total": amount,
        "client_reference_id": str(user_id),
        "currency": currency,
        "customer_details": {"email": None},
        "livemode": False,
        "metadata": metadata(user_id, package),
        "mode": "payment",
        "payment_intent": payment_intent,
        "payment_status": payment_status,
        "status": status,
        "url": None,
    }


def checkout_session_completed(
    user_id: Any, package: str, amount: int, *, event_id: str | None = None, **kw: Any
) -> Event:
    return event(
        "checkout.session.completed",
        checkout_session_object(user_id, package, amount, **kw),
        event_id=event_id,
    )


def checkout_session_async_payment_succeeded(
    user_id: Any, package: str, amount: int, *, event_id: str | None = None, **kw: Any
) -> Event:
    return event(
        "checkout.session.async_payment_succeeded",
        checkout_session_object(user_id, package, amount, payment_status="paid", **kw),
        event_id=event_id,
    )


def checkout_session_async_payment_failed(
    user_id: Any, package: str, amount: int, *, event_id: str | None = None, **kw: Any
) -> Event:
    return event(
        "checkout.session.async_payment_failed",
        checkout_session_object(user_id, package, amount, payment_status="unpaid", **kw),
        event_id=event_id,
    )


def checkout_session_expired(
    user_id: Any, package: str, amount: int, *, event_id: str | None = None, **kw: Any
) -> Event:
    return event(
        "checkout.session.expired",
        checkout_session_object(
            user_id, package, amount, payment_status="unpaid", status="expired", **kw
        ),
        event_id=event_id,
    )


def payment_intent_object(
    user_id: Any | None,
    package: str | None,
    amount: int,
    *,
    pi: str | None = None,
    currency: str = "usd",
    status: str = "succeeded",
    charge: str | None = None,
    with_metadata: bool = True,
) -> dict[str, Any]:
    """A PaymentIntent; ``with_metadata=False`` makes one tokenbill did not create."""
    succeeded = status == "succeeded"
    meta = metadata(user_id, package or "") if with_metadata else {}
    return {
        "id": pi or new_id("pi"),
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": amount if succeeded else 0,
        "capture_method": "automatic",
        "currency": currency,
        "last_payment_error": None
        if succeeded
        else {"code": "card_declined", "message": "Your card was declined."},
        "latest_charge": (charge or new_id("ch")) if succeeded else None,
        "livemode": False,
        "metadata": meta,
        "status": status,
    }


def payment_intent_succeeded(
    user_id: Any | None, package: str | None, amount: int, *, event_id: str | None = None, **kw: Any
) -> Event:
    return event(
        "payment_intent.succeeded",
        payment_intent_object(user_id, package, amount, **kw),
        event_id=event_id,
    )


def payment_intent_payment_failed(
    user_id: Any | None, package: str | None, amount: int, *, event_id: str | None = None, **kw: Any
) -> Event:
    return event(
        "payment_intent.payment_failed",
        payment_intent_object(user_id, package, amount, status="requires_payment_method", **kw),
        event_id=event_id,
    )


def charge_object(
    pi: str,
    amount: int,
    *,
    charge: str | None = None,
    amount_refunded: int = 0,
    currency: str = "usd",
    receipt_url: str | None = None,
) -> dict[str, Any]:
    charge = charge or new_id("ch")
    return {
        "id": charge,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "captured": True,
        "currency": currency,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": pi,
        "receipt_url": receipt_url or f"https://pay.stripe.com/receipts/test/{charge}",
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }


def charge_succeeded(pi: str, amount: int, *, event_id: str | None = None, **kw: Any) -> Event:
    return event("charge.succeeded", charge_object(pi, amount, **kw), event_id=event_id)


def charge_refunded(
    pi: str,
    amount: int,
    amount_refunded: int,
    *,
    previously_refunded: int = 0,
    event_id: str | None = None,
    **kw: Any,
) -> Event:
    """A charge.refunded event; ``amount_refunded`` is Stripe's cumulative total."""
    return event(
        "charge.refunded",
        charge_object(pi, amount, amount_refunded=amount_refunded, **kw),
        event_id=event_id,
        previous_attributes={"amount_refunded": previously_refunded},
    )


def dispute(
    action: str,
    pi: str,
    amount: int,
    *,
    status: str = "needs_response",
    charge: str | None = None,
    dispute_id: str | None = None,
    reason: str = "fraudulent",
    currency: str = "usd",
    event_id: str | None = None,
) -> Event:
    """charge.dispute.<action> (created, updated, closed, funds_withdrawn, funds_reinstated)."""
    obj = {
        "id": dispute_id or new_id("dp"),
        "object": "dispute",
        "amount": amount,
        "charge": charge or new_id("ch"),
        "currency": currency,
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": pi,
        "reason": reason,
        "status": status,
    }
    return event(f"charge.dispute.{action}", obj, event_id=event_id)


def encode(evt: Event) -> bytes:
    """The body Stripe would POST (compact JSON, UTF-8)."""
    return json.dumps(evt, separators=(",", ":")).encode()


def build(
    type_: str,
    *,
    user_id: Any,
    package: str,
    amount: int | None = None,
    pi: str | None = None,
    cs: str | None = None,
    charge: str | None = None,
    refunded: int | None = None,
    dispute_status: str | None = None,
    dispute_id: str | None = None,
) -> Event:
    """Any handled event type from one set of options (what send_event exposes)."""
    amount = DEFAULT_AMOUNTS.get(package, 0) if amount is None else amount
    pi = pi or new_id("pi")
    session_builders: dict[str, Callable[..., Event]] = {
        "checkout.session.completed": checkout_session_completed,
        "checkout.session.async_payment_succeeded": checkout_session_async_payment_succeeded,
        "checkout.session.async_payment_failed": checkout_session_async_payment_failed,
        "checkout.session.expired": checkout_session_expired,
    }
    if type_ in session_builders:
        return session_builders[type_](user_id, package, amount, pi=pi, cs=cs)
    if type_ == "payment_intent.succeeded":
        return payment_intent_succeeded(user_id, package, amount, pi=pi, charge=charge)
    if type_ == "payment_intent.payment_failed":
        return payment_intent_payment_failed(user_id, package, amount, pi=pi)
    if type_ in ("charge.succeeded", "charge.updated"):
        return event(type_, charge_object(pi, amount, charge=charge))
    if type_ == "charge.refunded":
        return charge_refunded(pi, amount, amount if refunded is None else refunded, charge=charge)
    if type_.startswith("charge.dispute."):
        action = type_.removeprefix("charge.dispute.")
        default_status = "lost" if action == "closed" else "needs_response"
        return dispute(
            action,
            pi,
            amount,
            status=dispute_status or default_status,
            charge=charge,
            dispute_id=dispute_id,
        )
    raise ValueError(f"no builder for event type {type_!r}")


HANDLED_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.succeeded",
    "charge.updated",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)

"""The Stripe SDK client, built from config, and the checkout fulfilment shared by every caller.

The success page and ``flask --app webapp reconcile`` both fulfil a Checkout Session through
``fulfil_session``; the webhook reaches the same SQL (tokenbill.fulfil_checkout_session)
through api.handle_stripe_event. Granting therefore happens once whichever arrives first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import stripe
from flask import current_app

from .db import Database

log = logging.getLogger(__name__)

EXTENSION_KEY = "tokenbill_stripe"
# Richest first: the charge (receipt) and the invoice (links); some API versions and fakes
# refuse a nested or an unknown expansion, and both links are optional.
SESSION_EXPANDS = (
    ["payment_intent.latest_charge", "invoice"],
    ["payment_intent.latest_charge"],
    ["payment_intent"],
)


def client_from_config(config: Mapping[str, Any]) -> stripe.StripeClient:
    """Build a StripeClient; STRIPE_API_BASE points it at stripe-mock (or a test proxy)."""
    key = config.get("STRIPE_SECRET_KEY") or ""
    if not key:
        raise RuntimeError("STRIPE_SECRET_KEY is not set")
    api_base = config.get("STRIPE_API_BASE") or ""
    if api_base:
        return stripe.StripeClient(key, base_addresses={"api": api_base.rstrip("/")})
    return stripe.StripeClient(key)


def get_client() -> stripe.StripeClient:
    """The current app's client, created on first use so apps without Stripe still start."""
    client = current_app.extensions.get(EXTENSION_KEY)
    if client is None:
        client = client_from_config(current_app.config)
        current_app.extensions[EXTENSION_KEY] = client
    return client


def customer_idempotency_key(user_id: UUID | str) -> str:
    """One key per account: a retried or concurrent creation returns the same Customer."""
    return f"tokenbill-customer-{user_id}"


def customer_of(db: Database, user_id: UUID | str) -> str | None:
    """The account's recorded Stripe Customer id, if it has one."""
    row = db.fetch_one(
        "select customer_id from api.stripe_customers where user_id = %s", [str(user_id)]
    )
    return row["customer_id"] if row else None


def ensure_customer(
    db: Database, client: stripe.StripeClient, user_id: UUID | str, email: str
) -> str:
    """The account's Stripe Customer id, creating (once) and recording it on first use.

    No connection is held during the Stripe call; api.record_stripe_customer keeps the first
    id recorded, and the idempotency key makes a concurrent creation return the same Customer.
    """
    known = customer_of(db, user_id)
    if known:
        return known
    customer = client.v1.customers.create(
        params={"email": email, "metadata": {"user_id": str(user_id)}},
        options={"idempotency_key": customer_idempotency_key(user_id)},
    )
    recorded = db.fetch_one(
        "select api.record_stripe_customer(%s, %s) as id", [str(user_id), customer.id]
    )
    return recorded["id"]  # type: ignore[index]


def saved_card(client: stripe.StripeClient, customer_id: str) -> Any | None:
    """The customer's most recently saved card (Stripe lists newest first), if any."""
    cards = client.v1.payment_methods.list(params={"customer": customer_id, "type": "card"})
    return cards.data[0] if cards.data else None


def action_url(intent: Any) -> str | None:
    """The bank's page a requires_action PaymentIntent redirects to (3-D Secure), if any."""
    action = intent.to_dict().get("next_action") or {}
    url = (action.get("redirect_to_url") or {}).get("url")
    return url if isinstance(url, str) and url.startswith("https://") else None


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(obj: stripe.StripeObject) -> str:
    """The object as Stripe sent it (raw body when available), ready for a jsonb parameter."""
    response = getattr(obj, "last_response", None)
    if response is not None and response.body:
        return response.body
    return json.dumps(obj.to_dict(recursive=True), default=_json_default)


def retrieve_session(client: stripe.StripeClient, session_id: str) -> str:
    """Fetch a Checkout Session with its PaymentIntent (and charge and invoice, for the
    receipt and invoice links) as JSON."""
    *richer, last = SESSION_EXPANDS
    for expand in richer:
        try:
            return to_json(
                client.v1.checkout.sessions.retrieve(session_id, params={"expand": expand})
            )
        except stripe.InvalidRequestError as exc:
            log.info("expand %s refused (%s); retrying with less", expand, exc.code)
    return to_json(client.v1.checkout.sessions.retrieve(session_id, params={"expand": last}))


def fulfil_session(
    conn: psycopg.Connection, session_json: str, user_id: UUID | str
) -> dict[str, Any]:
    """Run the idempotent fulfilment for a session of ``user_id`` (TB002 if it is not theirs).

    ``conn`` must return dict rows, as the app's pool and the scripts' connections do.
    """
    row = conn.execute(
        "select * from api.fulfil_checkout_session(%s::jsonb, %s::uuid)",
        [session_json, str(user_id)],
    ).fetchone()
    if row is None:  # pragma: no cover - the function always returns one row or raises
        raise RuntimeError("api.fulfil_checkout_session returned no row")
    return row


def grant_verdict(result: Mapping[str, Any]) -> str:
    """Name what fulfilment did, for people: granted, already granted, rejected or pending."""
    detail = result.get("detail") or ""
    if result.get("outcome") == "rejected":
        return "rejected"
    if detail.startswith("already_granted"):
        return "already granted"
    if detail.startswith("granted"):
        return "granted"
    if result.get("payment_status") == "unpaid":
        return "pending"
    return "skipped"

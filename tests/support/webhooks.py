"""Delivering signed events to the app's webhook endpoint, and reading what they did."""

from __future__ import annotations

from typing import Any

from tests.conftest import WEBHOOK_SECRET
from tests.support import stripe_events as ev

WEBHOOK = "/api/webhook/stripe"


def deliver(client, evt: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp=None):
    body, header = ev.signed(evt, secret, timestamp)
    return client.post(
        WEBHOOK, data=body, headers={"Stripe-Signature": header, "Content-Type": "application/json"}
    )


def event_row(owner, event_id: str) -> dict[str, Any] | None:
    return owner.execute(
        "select outcome, detail, attempts from api.stripe_events where id = %s", [event_id]
    ).fetchone()


def purchase(owner, pi: str) -> dict[str, Any] | None:
    return owner.execute(
        "select * from api.purchases where payment_intent_id = %s", [pi]
    ).fetchone()


def grants_for(owner, pi: str) -> int:
    return owner.execute(
        "select count(*) as n from api.ledger_entries where payment_intent_id = %s"
        " and kind = 'purchase'",
        [pi],
    ).fetchone()["n"]

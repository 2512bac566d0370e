"""POST /api/webhook/stripe: verify the signature, then hand the event to PostgreSQL once.

The whole effect (inbox dedupe, grant, clawback) is api.handle_stripe_event in one transaction:
one statement in autocommit (Database.call), so one round trip to PostgreSQL.
We answer 200 only after it committed; any database trouble answers 500 so Stripe retries,
because a 2xx with a lost grant could never be recovered from Stripe's side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
import stripe
from flask import Blueprint, Response, current_app, jsonify, request
from psycopg_pool import PoolTimeout

from .config import stripe_livemode
from .db import get_webhook_db
from .extensions import csrf, limiter
from .metrics import record_webhook

bp = Blueprint("webhooks", __name__)
log = logging.getLogger(__name__)

FAILURE_RECORD_TIMEOUT_SECONDS = 2.0
# Errors caused by the event itself: retrying the same body cannot help.
PAYLOAD_SQLSTATES = {"TB003"}
HANDLE_EVENT = "select * from api.handle_stripe_event(%s::jsonb, %s)"


def _reply(status: int, **body: object) -> tuple[Response, int]:
    return jsonify(body), status


@dataclass(frozen=True)
class Delivery:
    """A Stripe delivery whose signature the SDK verified: the body and what it says it is."""

    body: str
    event_id: object
    event_type: str


def verify_delivery() -> Delivery | tuple[Response, int]:
    """Verify this request's ``Stripe-Signature`` with the SDK, before anything else; the
    400/500 reply when it cannot be trusted. Shared with the benchmark's control route, so
    the two differ only by what happens after verification."""
    secret = current_app.config.get("STRIPE_WEBHOOK_SECRET") or ""
    if not secret:
        log.error("STRIPE_WEBHOOK_SECRET is not set: refusing webhook (events stay at Stripe)")
        return _reply(500, error="webhook secret not configured")

    payload = request.get_data()
    signature = request.headers.get("Stripe-Signature")
    if not signature:
        log.warning("stripe webhook without a Stripe-Signature header")
        record_webhook("unknown", "bad_request")
        return _reply(400, error="missing signature")
    try:
        evt = stripe.Webhook.construct_event(payload, signature, secret)
    except stripe.SignatureVerificationError as exc:
        log.warning("stripe webhook with an invalid signature: %s", exc.user_message or exc)
        record_webhook("unknown", "bad_request")
        return _reply(400, error="invalid signature")
    except (ValueError, AttributeError, TypeError, RecursionError):
        # Verified bytes that are not a JSON object (UnicodeDecodeError is a ValueError).
        log.warning("stripe webhook with a malformed payload (%d bytes)", len(payload))
        record_webhook("unknown", "bad_request")
        return _reply(400, error="malformed payload")
    return Delivery(
        body=payload.decode("utf-8"),
        event_id=getattr(evt, "id", None),
        event_type=str(getattr(evt, "type", None) or "unknown"),
    )


@bp.post("/api/webhook/stripe")
@csrf.exempt
@limiter.exempt
def stripe_webhook():
    """Verify and apply one Stripe event."""
    delivery = verify_delivery()
    if not isinstance(delivery, Delivery):
        return delivery
    body, event_id, event_type = delivery.body, delivery.event_id, delivery.event_type
    timeout = float(current_app.config["WEBHOOK_DB_TIMEOUT_SECONDS"])
    livemode = stripe_livemode(current_app.config)
    try:
        row = get_webhook_db().call(HANDLE_EVENT, [body, livemode], timeout=timeout)
    except psycopg.Error as exc:
        if exc.sqlstate in PAYLOAD_SQLSTATES or isinstance(exc, psycopg.errors.DataError):
            log.warning("stripe event %s refused by the database: %s", event_id, exc)
            record_webhook(event_type, "bad_request")
            return _reply(400, error="malformed event")
        record_webhook(event_type, "error")
        return _failed(body, event_id, exc)
    except PoolTimeout as exc:
        record_webhook(event_type, "error")
        return _failed(body, event_id, exc)

    assert row is not None  # the function always returns one row
    log.info("stripe event %s: %s (%s)", row["event_id"], row["outcome"], row["detail"])
    record_webhook(event_type, row["outcome"])
    return _reply(200, received=True, outcome=row["outcome"], detail=row["detail"])


def _failed(body: str, event_id: object, exc: Exception):
    """Log, try to leave a trace in api.stripe_events, and ask Stripe to retry."""
    error = f"{type(exc).__name__}: {exc}"
    log.error("stripe event %s not handled, Stripe will retry: %s", event_id, error)
    try:
        get_webhook_db().call(
            "select api.record_stripe_event_failure(%s::jsonb, %s)",
            [body, error],
            timeout=FAILURE_RECORD_TIMEOUT_SECONDS,
        )
    except (psycopg.Error, PoolTimeout) as record_exc:
        log.warning("could not record the failure of event %s: %s", event_id, record_exc)
    return _reply(500, error="event not processed; retry later")

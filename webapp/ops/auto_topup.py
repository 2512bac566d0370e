"""The auto top-up worker: ``flask --app webapp auto-topup [--once] [--interval SECONDS]``.

PostgreSQL queues a top-up when a consumption crosses the user's threshold (0019); this
worker claims one row at a time (FOR UPDATE SKIP LOCKED, committed per row), creates the
off-session PaymentIntent with the row's idempotency key, and records what Stripe said. It
grants nothing: payment_intent.succeeded does, through the webhook, like any purchase. A
crash between Stripe's answer and the commit leaves the row queued; the retry sends the same
idempotency key, so Stripe answers the same PaymentIntent instead of charging twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click
import stripe
from flask import current_app
from flask.cli import with_appcontext
from psycopg.rows import dict_row

from webapp.config import EMULATOR_STRIPE_KEY, is_development
from webapp.db import connect_as
from webapp.stripe_gateway import action_url, client_from_config, saved_card

from .connection import worker_url

log = logging.getLogger(__name__)

WORKER_ROLE = "tokenbill_notifier"  # claims and finishes outbox rows; cannot grant tokens


@dataclass(frozen=True)
class Outcome:
    """What creating one PaymentIntent did, in api.finish_auto_topup's terms."""

    status: str  # processing | requires_action | failed | retry
    payment_intent_id: str | None = None
    action_url: str | None = None
    error: str | None = None


def intent_params(row: dict[str, Any], payment_method: str) -> dict[str, Any]:
    """The off-session PaymentIntent for a queued top-up: the package's terms, our metadata."""
    return {
        "amount": row["amount_cents"],
        "currency": row["currency"],
        "customer": row["customer_id"],
        "payment_method": payment_method,
        "confirm": True,
        "off_session": True,
        "description": f"Auto top-up: {row['tokens']} tokens",
        "metadata": {
            "user_id": str(row["user_id"]),
            "package": row["package_code"],
            "tokens": str(row["tokens"]),
            "topup_id": str(row["id"]),
            "source": "auto_topup",
        },
    }


def from_intent(intent: Any) -> Outcome:
    """Map a PaymentIntent's status to the top-up's."""
    status = intent.status
    if status in ("succeeded", "processing", "requires_capture"):
        return Outcome("processing", intent.id)
    if status == "requires_action":
        return Outcome("requires_action", intent.id, action_url(intent))
    error = intent.to_dict().get("last_payment_error") or {}
    message = error.get("message") if isinstance(error, dict) else None
    return Outcome("failed", intent.id, error=message or f"payment {status}")


def from_card_error(exc: stripe.CardError) -> Outcome:
    """A declined off-session charge; authentication_required means 3-D Secure is needed."""
    body = exc.json_body or {}
    err = body.get("error", {}) if isinstance(body, dict) else {}
    intent = err.get("payment_intent") or {}
    pi = intent.get("id") if isinstance(intent, dict) else None
    if exc.code == "authentication_required":
        return Outcome("requires_action", pi, error=exc.user_message or "authentication required")
    return Outcome("failed", pi, error=exc.user_message or "Your card was declined.")


def charge(client: stripe.StripeClient, row: dict[str, Any]) -> Outcome:
    """Create (or, on a retry, get back) the PaymentIntent of one queued top-up."""
    if not row["customer_id"]:
        return Outcome("failed", error="no saved card: buy once with 'Save my card' ticked")
    try:
        card = saved_card(client, row["customer_id"])
        if card is None:
            return Outcome("failed", error="no saved card: buy once with 'Save my card' ticked")
        intent = client.v1.payment_intents.create(
            params=intent_params(row, card.id),  # type: ignore[arg-type]
            options={"idempotency_key": row["idempotency_key"]},
        )
    except stripe.CardError as exc:
        return from_card_error(exc)
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        return Outcome("retry", error=type(exc).__name__)
    except stripe.StripeError as exc:
        if exc.http_status is None or exc.http_status >= 500 or exc.http_status == 409:
            return Outcome("retry", error=f"{type(exc).__name__} {exc.http_status}")
        return Outcome(
            "failed", error=f"Stripe refused the payment ({exc.code or exc.http_status})"
        )
    return from_intent(intent)


def run_once(database_url: str, client: stripe.StripeClient, limit: int = 100) -> Counter[str]:
    """Charge up to ``limit`` due top-ups, one transaction per row; count the outcomes."""
    counts: Counter[str] = Counter()
    with connect_as(database_url, WORKER_ROLE, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(limit):
            with conn.transaction():
                row = conn.execute("select * from api.claim_auto_topup()").fetchone()
                if row is None:
                    return counts
                outcome = charge(client, row)
                status = conn.execute(
                    "select api.finish_auto_topup(%s, %s, %s, %s, %s) as status",
                    [
                        row["id"],
                        outcome.status,
                        outcome.payment_intent_id,
                        outcome.action_url,
                        outcome.error,
                    ],
                ).fetchone()["status"]  # type: ignore[index]
            log.info("auto top-up %s: %s (%s)", row["id"], status, outcome.error or "ok")
            counts[status] += 1
    return counts


def refusal(config: Mapping[str, Any]) -> str | None:
    """Why no top-up may be charged with these settings, or None when it may.

    Outside development a simulated Stripe (the emulator's key, PAYMENTS_SIMULATED) answers
    "succeeded" for a card nobody charged, and its webhook would grant the tokens for free.
    """
    key = config.get("STRIPE_SECRET_KEY") or ""
    if not key:
        return "STRIPE_SECRET_KEY is not set"
    if not is_development(config) and (
        key == EMULATOR_STRIPE_KEY or config.get("PAYMENTS_SIMULATED")
    ):
        return (
            "payments are simulated (the emulator's key or PAYMENTS_SIMULATED) and TOKENBILL_ENV"
            " is not development: no card would really be charged"
        )
    return None


def summary(counts: Counter[str]) -> str | None:
    """The outcomes of a pass for the log, or None when nothing was due."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or None


@click.command("auto-topup")
@click.option("--once", is_flag=True, help="One pass over the due top-ups, then exit.")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between passes.")
@with_appcontext
def command(once: bool, interval: float) -> None:
    """Charge queued auto top-ups off-session (run continuously, or --once from cron)."""
    config = current_app.config
    refused = refusal(config)
    if refused:
        raise click.UsageError(f"auto top-ups are not charged: {refused}")
    client = client_from_config(config)
    while True:
        counts = run_once(worker_url(config), client)
        if counts or once:
            click.echo(f"auto top-ups: {summary(counts) or 'none due'}")
        if once:
            return
        time.sleep(interval)

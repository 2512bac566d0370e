"""Grant paid Checkout Sessions whose webhook never arrived (or failed) — safe to run any time.

    flask --app webapp reconcile [--since-hours 72]

Lists recent complete Checkout Sessions from the Stripe API and runs, for each paid session
that tokenbill created, the same idempotent fulfilment as the success page
(api.fulfil_checkout_session, owner taken from our api.checkout_sessions row). Sessions we never
recorded are reported, never granted. Acts as tokenbill_webhook, the only role that applies
Stripe objects. Reads WEBHOOK_DATABASE_URL (else DATABASE_URL), STRIPE_SECRET_KEY and
STRIPE_API_BASE from the app's configuration (the environment or .env). Exit status 1 when
any session was rejected or failed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import click
import psycopg
import stripe
from flask import current_app
from flask.cli import with_appcontext
from psycopg.rows import dict_row

from webapp.db import WEBHOOK_ROLE, connect_as
from webapp.stripe_gateway import client_from_config, fulfil_session, grant_verdict
from webapp.stripe_gateway import retrieve_session as stripe_retrieve


@dataclass(frozen=True)
class Result:
    session_id: str
    verdict: str  # granted | already granted | rejected | pending | skipped | error
    detail: str

    def line(self) -> str:
        return f"{self.session_id}: {self.verdict}: {self.detail}"


def reconcile_session(
    conn: psycopg.Connection,
    session_id: str,
    payment_status: str | None,
    fetch: Callable[[str], str],
) -> Result:
    """Fulfil one listed session if it is ours and paid; ``fetch`` returns its full JSON."""
    row = conn.execute(
        "select user_id from api.checkout_sessions where id = %s", [session_id]
    ).fetchone()
    if row is None:
        return Result(session_id, "skipped", "not created by tokenbill")
    if payment_status not in ("paid", "no_payment_required"):
        return Result(session_id, "skipped", f"payment_status is {payment_status}")
    user_id = row["user_id"] if isinstance(row, dict) else row[0]
    try:
        result = fulfil_session(conn, fetch(session_id), user_id)
    except psycopg.Error as exc:
        # One bad session must not stop the run; report it and carry on.
        return Result(session_id, "error", f"{type(exc).__name__}: {exc}")
    return Result(session_id, grant_verdict(result), result["detail"] or "")


def listed_sessions(client: stripe.StripeClient, since: int) -> Iterable[Any]:
    """Complete Checkout Sessions created since ``since`` (unix time), every page."""
    page = client.v1.checkout.sessions.list(
        params={"created": {"gte": since}, "status": "complete", "limit": 100}
    )
    return page.auto_paging_iter()


def reconcile(
    conn: psycopg.Connection,
    client: stripe.StripeClient,
    since_hours: float,
    out: TextIO | None = None,
) -> list[Result]:
    """Reconcile every listed session, printing one line each and a summary."""
    out = out or sys.stdout
    since = int(time.time() - since_hours * 3600)
    results = []
    for session in listed_sessions(client, since):
        result = reconcile_session(
            conn,
            session.id,
            getattr(session, "payment_status", None),
            lambda sid: stripe_retrieve(client, sid),
        )
        results.append(result)
        print(result.line(), file=out)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) or "nothing"
    print(f"{len(results)} sessions since {since_hours:g} h: {summary}", file=out)
    return results


def connect(url: str, role: str) -> psycopg.Connection:
    """Autocommit (each fulfilment is one statement, hence atomic), as the webhook role."""
    return connect_as(url, role, autocommit=True, row_factory=dict_row)


@click.command("reconcile")
@click.option("--since-hours", type=float, default=72.0, show_default=True)
@with_appcontext
def command(since_hours: float) -> None:
    """Grant paid Checkout Sessions whose webhook never arrived (or failed)."""
    config = current_app.config
    url = config.get("WEBHOOK_DATABASE_URL") or config.get("DATABASE_URL") or ""
    if not url:
        raise click.UsageError("DATABASE_URL is not set")
    try:
        client = client_from_config(config)
    except RuntimeError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        with connect(url, WEBHOOK_ROLE) as conn:
            results = reconcile(conn, client, since_hours)
    except stripe.StripeError as exc:
        raise click.ClickException(
            f"Stripe API: {type(exc).__name__} (request {exc.request_id})"
        ) from None
    if any(r.verdict in ("rejected", "error") for r in results):
        raise SystemExit(1)

"""Post low-balance alerts to ALERT_WEBHOOK_URL, signed like Stripe signs its webhooks.

The alerts table is the outbox: each pass claims unsent alerts (``FOR UPDATE SKIP LOCKED``, so
several notifiers never send one alert twice at once), posts each as JSON with a
``Tokenbill-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` header, and records
success or the error; failed alerts stay in the outbox and are retried on the next pass.

Usage: ``flask --app webapp notify-alerts [--once] [--interval SECONDS]``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext
from psycopg.rows import dict_row

from webapp.db import connect_as
from webapp.signing import signature_header

from .connection import worker_url

log = logging.getLogger("tokenbill.alerts")


def _payload(alert: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "type": "low_balance",
            "alert_id": alert["id"],
            "user_id": str(alert["user_id"]),
            "email": alert["email"],
            "balance": alert["balance"],
            "threshold": alert["threshold"],
            "created_at": alert["created_at"].isoformat(),
        },
        separators=(",", ":"),
    ).encode()


def post(url: str, secret: str, body: bytes, timeout: float = 10) -> None:
    """POST one notification; raise on a non-2xx answer or a network error."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Tokenbill-Signature": signature_header(body, secret),
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(url, response.status, "non-2xx", response.headers, None)


NOTIFIER_ROLE = "tokenbill_notifier"  # may claim and finish notifications, nothing else


def run_once(
    database_url: str, url: str, secret: str, role: str = NOTIFIER_ROLE
) -> tuple[int, int]:
    """Send every pending alert once; return (sent, failed)."""
    sent = failed = 0
    # autocommit: each batch below is its own transaction, committed before the next is
    # claimed, so a crash never rolls back (and re-sends) alerts already delivered
    with connect_as(database_url, role, autocommit=True, row_factory=dict_row) as conn:
        while True:
            with conn.transaction():
                batch = conn.execute("select * from api.claim_alert_notifications(20)").fetchall()
                for alert in batch:
                    error = None
                    try:
                        post(url, secret, _payload(alert))
                    except (OSError, urllib.error.URLError) as exc:
                        error = f"{type(exc).__name__}: {exc}"
                        log.warning("alert %s not delivered: %s", alert["id"], error)
                    conn.execute(
                        "select api.finish_alert_notification(%s, %s)", [alert["id"], error]
                    )
                    sent, failed = (sent + 1, failed) if error is None else (sent, failed + 1)
            if len(batch) < 20 or failed:
                return sent, failed


@click.command("notify-alerts")
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.option(
    "--interval", type=float, default=5.0, show_default=True, help="Seconds between passes."
)
@with_appcontext
def command(once: bool, interval: float) -> None:
    """Post low-balance alerts to ALERT_WEBHOOK_URL, signed; retry failed ones."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    database_url = worker_url(current_app.config)
    url = os.environ.get("ALERT_WEBHOOK_URL", "")
    secret = os.environ.get("ALERT_WEBHOOK_SECRET", "")
    if not (database_url and url and secret):
        raise click.UsageError(
            "set DATABASE_URL (or WORKER_DATABASE_URL), ALERT_WEBHOOK_URL and ALERT_WEBHOOK_SECRET"
        )
    while True:
        sent, failed = run_once(database_url, url, secret)
        if sent or failed:
            log.info("alerts sent: %s, failed: %s", sent, failed)
        if once:
            raise SystemExit(1 if failed else 0)
        time.sleep(interval)

"""Saved card and auto top-up settings, and completing a top-up that needs 3-D Secure.

The card lives at Stripe (saved by a Checkout purchase with "Save my card" ticked); we show
its brand, last 4 and expiry from Stripe and detach it on request. The settings and the
monthly cap live in PostgreSQL (api.set_auto_topup): the database decides when a top-up is
queued, never this module.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import stripe
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from psycopg_pool import PoolTimeout

from .billing import active_packages, base_url
from .config import customers_enabled
from .db import get_db
from .stripe_gateway import action_url, customer_of, get_client, saved_card

bp = Blueprint("autotopup", __name__, url_prefix="/account")
log = logging.getLogger(__name__)

MAX_CAP_CENTS = 100_000_000


def card_summary(card: Any) -> dict[str, Any]:
    """Only what the page shows: never more of the card than Stripe shows the merchant."""
    details = card.card
    return {
        "id": card.id,
        "brand": (details.brand or "card").title(),
        "last4": details.last4,
        "exp": f"{details.exp_month:02d}/{details.exp_year}",
    }


def current_card() -> tuple[dict[str, Any] | None, bool]:
    """(the user's saved card or None, whether Stripe could be asked)."""
    if not customers_enabled(current_app.config):
        return None, True
    customer = customer_of(get_db(), current_user.id)
    if not customer:
        return None, True
    try:
        card = saved_card(get_client(), customer)
    except stripe.StripeError as exc:
        log.warning("listing saved cards failed: %s %s", type(exc).__name__, exc.http_status)
        return None, False
    return (card_summary(card) if card else None), True


def settings_context() -> dict[str, Any]:
    """What the settings page shows about the card and auto top-up."""
    card, card_known = current_card()
    topup = get_db().fetch_one(
        "select * from api.auto_topup_settings where user_id = %s", [current_user.id]
    )
    recent = get_db().fetch_all(
        "select id, status, amount_cents, currency, package_code, error, created_at"
        " from api.auto_topups where user_id = %s order by id desc limit 5",
        [current_user.id],
    )
    return {
        "card": card,
        "card_known": card_known,
        "topup": topup,
        "recent_topups": recent,
        "packages": active_packages(),
    }


@bp.app_context_processor
def topup_notices() -> dict[str, Any]:
    """Top-ups waiting for the user (3-D Secure) and why auto top-up turned itself off."""
    if not getattr(current_user, "is_authenticated", False):
        return {}
    try:
        rows = _notices()
    except (psycopg.Error, PoolTimeout):
        return {}  # an error page for a database outage must still render
    return {"topup_notices": rows}


def _notices() -> list[Any]:
    return get_db().fetch_all(
        "select t.id, t.amount_cents, t.currency, null::text as disabled_reason"
        "  from api.auto_topups t where t.user_id = %s and t.status = 'requires_action'"
        " union all"
        " select null, null, null, s.disabled_reason from api.auto_topup_settings s"
        "  where s.user_id = %s and not s.enabled and s.disabled_reason is not null",
        [current_user.id, current_user.id],
    )


def _whole(name: str, low: int, high: int) -> int | None:
    raw = request.form.get(name, "").strip()
    return int(raw) if raw.isdigit() and low <= int(raw) <= high else None


@bp.post("/auto-topup")
@login_required
def save():
    """Save the auto top-up settings (PostgreSQL validates and enforces them)."""
    enabled = request.form.get("enabled") == "on"
    threshold = _whole("threshold", 1, 1_000_000)
    dollars = request.form.get("monthly_cap", "").strip()
    cap = int(dollars) * 100 if dollars.isdigit() and int(dollars) <= MAX_CAP_CENTS // 100 else None
    package = request.form.get("package", "")
    problems = []
    if threshold is None:
        problems.append("The threshold must be a whole number of tokens from 1 to 1000000.")
    if cap is None:
        problems.append("The monthly cap must be a whole number of dollars.")
    if enabled and not problems and current_card()[0] is None:
        problems.append("Save a card first: buy a package with \u201cSave my card\u201d ticked.")
    if not problems:
        row = get_db().fetch_one(
            "select code, amount_cents from api.packages where active and code = %s", [package]
        )
        if row is None:
            problems.append("Choose one of the listed packages.")
        elif enabled and cap < row["amount_cents"]:  # type: ignore[operator]
            problems.append("The monthly cap must cover at least one package.")
    if problems:
        for problem in problems:
            flash(problem, "error")
        return render_template("account/settings.html", **settings_context()), 400
    get_db().fetch_one(
        "select api.set_auto_topup(%s, %s, %s, %s, %s)",
        [current_user.id, enabled, threshold, package, cap],
    )
    flash("Auto top-up is on." if enabled else "Auto top-up is off.", "success")
    return redirect(url_for("account.settings"), code=303)


@bp.post("/card/remove")
@login_required
def remove_card():
    """Detach the saved card, only if it is this account's (Stripe lists the customer's)."""
    card, _ = current_card()
    wanted = request.form.get("payment_method", "")
    if card is None or card["id"] != wanted:
        abort(404, "No such saved card.")
    try:
        get_client().v1.payment_methods.detach(wanted)
    except stripe.StripeError as exc:
        log.error("detaching a card failed: %s %s", type(exc).__name__, exc.http_status)
        flash("Stripe could not remove the card just now; try again in a minute.", "error")
        return redirect(url_for("account.settings"), code=303)
    flash("Your saved card was removed; auto top-up will not charge it.", "success")
    return redirect(url_for("account.settings"), code=303)


def _waiting_topup(topup_id: int) -> dict[str, Any]:
    row = get_db().fetch_one(
        "select id, status, amount_cents, currency, payment_intent_id, action_url"
        " from api.auto_topups where id = %s and user_id = %s",
        [topup_id, current_user.id],
    )
    if row is None:
        abort(404, "No such top-up.")
    return row


@bp.get("/topups/<int:topup_id>/authenticate")
@login_required
def authenticate(topup_id: int):
    """Explain the waiting payment; the button confirms it with the bank (3-D Secure)."""
    return render_template("account/authenticate.html", topup=_waiting_topup(topup_id))


@bp.post("/topups/<int:topup_id>/authenticate")
@login_required
def confirm(topup_id: int):
    """Confirm the PaymentIntent on-session and send the buyer to their bank's page.

    The tokens still come from payment_intent.succeeded through the webhook, once.
    """
    topup = _waiting_topup(topup_id)
    if topup["status"] != "requires_action" or not topup["payment_intent_id"]:
        flash("This top-up is not waiting for you.", "info")
        return redirect(url_for("account.settings"), code=303)
    if topup["action_url"]:
        return redirect(topup["action_url"], code=303)
    back = f"{base_url()}{url_for('account.settings')}"
    try:
        intent = get_client().v1.payment_intents.confirm(
            topup["payment_intent_id"], params={"return_url": back}
        )
    except stripe.StripeError as exc:
        log.error("confirming a top-up failed: %s %s", type(exc).__name__, exc.http_status)
        flash("Stripe could not start the confirmation; buy a package instead.", "error")
        return redirect(url_for("account.settings"), code=303)
    url = action_url(intent)
    if url:
        return redirect(url, code=303)
    flash("Thanks: the payment is being processed; your tokens arrive shortly.", "success")
    return redirect(url_for("account.settings"), code=303)

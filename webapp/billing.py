"""Buying tokens through Stripe-hosted Checkout.

The server decides what is sold: the line item is built from the package row, never from the
form. Tokens are granted by the database (api.fulfil_checkout_session / handle_stripe_event),
whichever of the success page, the webhook or reconciliation gets there first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import secrets
from typing import Any

import stripe
from flask import (
    Blueprint,
    abort,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from .config import customers_enabled
from .db import Row, get_db, get_webhook_db
from .errors import error_response
from .extensions import limiter
from .stripe_gateway import (
    ensure_customer,
    fulfil_session,
    get_client,
    grant_verdict,
    retrieve_session,
)
from .users import load_user

bp = Blueprint("billing", __name__, url_prefix="/billing")
log = logging.getLogger(__name__)

NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SESSION_ID_RE = re.compile(r"^cs_[A-Za-z0-9_]{1,250}$")


@bp.app_template_filter("money")
def money(cents: int | float, currency: str = "usd") -> str:
    """Format cents for display (e.g. ``$5.00``); presentation only."""
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency.lower())
    amount = f"{cents / 100:,.2f}"
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"


def active_packages() -> list[Row]:
    return get_db().fetch_all(
        "select code, name, tokens, amount_cents, currency, stripe_price_id from api.packages"
        " where active order by sort_order, amount_cents"
    )


def active_package(code: str) -> Row | None:
    return get_db().fetch_one(
        "select code, name, tokens, amount_cents, currency, stripe_price_id from api.packages"
        " where active and code = %s",
        [code],
    )


def idempotency_key(user_id: Any, package: str, nonce: str, save_card: bool = False) -> str:
    """One key per (user, package, rendered form): a double submit reuses the first session.

    The nonce is minted each time the buy page renders (no-store), so a later deliberate
    purchase gets a fresh key while a double click or a resubmitted request does not.
    """
    # The card choice changes the request: Stripe refuses one key for two different requests.
    suffix = ":save-card" if save_card else ""
    digest = hashlib.sha256(f"{user_id}:{package}:{nonce}{suffix}".encode()).hexdigest()
    return f"tokenbill-checkout-{digest[:40]}"


def base_url() -> str:
    return current_app.config.get("PUBLIC_BASE_URL") or request.host_url.rstrip("/")


def session_params(
    package: Row, user_id: str, customer_id: str | None, email: str, *, save_card: bool = False
) -> dict[str, Any]:
    """Checkout Session parameters, from the server's package row and settings only.

    ``customer``: the account's one Stripe Customer, so receipts, saved cards and invoices
    belong together (None only where STRIPE_CUSTOMERS is off: the bundled emulator has no
    Customers yet, so the session names the buyer's email). ``save_card``: the buyer opted in
    to keep the card for auto top-up.
    """
    metadata = {"user_id": user_id, "package": package["code"], "tokens": str(package["tokens"])}
    if package["stripe_price_id"]:
        line_item: dict[str, Any] = {"price": package["stripe_price_id"], "quantity": 1}
    else:
        line_item = {
            "price_data": {
                "currency": package["currency"],
                "unit_amount": package["amount_cents"],
                "product_data": {"name": package["name"]},
            },
            "quantity": 1,
        }
    # "source": a Checkout PaymentIntent whose amount a discount or tax changed waits for the
    # session's event, which carries the subtotal the database checks (0019).
    intent_data: dict[str, Any] = {"metadata": {**metadata, "source": "checkout"}}
    if save_card and customer_id:
        intent_data["setup_future_usage"] = "off_session"
    base = base_url()
    config = current_app.config
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [line_item],
        "client_reference_id": user_id,
        "metadata": metadata,
        "payment_intent_data": intent_data,
        # Stripe substitutes {CHECKOUT_SESSION_ID}; it must stay unescaped.
        "success_url": f"{base}{url_for('billing.success')}?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base}{url_for('billing.cancel', package=package['code'])}",
    }
    if customer_id:
        params["customer"] = customer_id
    else:
        params["customer_email"] = email
    if config.get("INVOICE_CREATION"):
        params["invoice_creation"] = {"enabled": True}
    if config.get("ALLOW_PROMOTION_CODES"):
        params["allow_promotion_codes"] = True
    if config.get("AUTOMATIC_TAX"):
        params["automatic_tax"] = {"enabled": True}
        # Stripe needs the buyer's address for tax; Checkout collects it onto the Customer.
        params["customer_update"] = {"address": "auto"}
        params["billing_address_collection"] = "required"
    return params


def stripe_failure(action: str, exc: stripe.StripeError) -> tuple[str, int]:
    """Log a Stripe error without secrets and show a friendly page."""
    log.error(
        "%s failed: %s http_status=%s code=%s request_id=%s",
        action,
        type(exc).__name__,
        exc.http_status,
        exc.code,
        exc.request_id,
    )
    return render_template("billing/stripe_error.html"), 502


@bp.get("/buy")
@login_required
def buy():
    """Show the packages; each form carries a fresh nonce for the idempotency key."""
    page = render_template(
        "billing/buy.html", packages=active_packages(), nonce=secrets.token_urlsafe(24)
    )
    response = make_response(page)
    # A page restored by the back button must not resubmit an old nonce.
    response.headers["Cache-Control"] = "no-store"
    return response


def _checkout_limit() -> str:
    return current_app.config["CHECKOUT_RATE_LIMIT"]


def _checkout_key() -> str:
    """Per account: every Checkout Session costs a Stripe API call and a database row."""
    user_id = getattr(current_user, "id", None)
    return f"checkout:{user_id}" if user_id else f"checkout-ip:{request.remote_addr}"


@bp.post("/checkout")
@limiter.limit(_checkout_limit, key_func=_checkout_key)
@login_required
def checkout():
    """Create a Checkout Session for a package and send the browser to Stripe."""
    code = request.form.get("package", "").strip()
    nonce = request.form.get("nonce", "")
    package = active_package(code) if code else None
    if package is None:
        return error_response(400, f"Unknown package {code!r}: choose one of the listed packages.")
    if not NONCE_RE.match(nonce):
        return error_response(400, "This form has expired: reload the page and choose again.")

    user_id = str(current_user.id)
    save_card = request.form.get("save_card") == "on"
    try:
        client = get_client()
        customer_id = (
            ensure_customer(get_db(), client, user_id, current_user.email)
            if customers_enabled(current_app.config)
            else None
        )
        params = session_params(
            package, user_id, customer_id, current_user.email, save_card=save_card
        )
        session = client.v1.checkout.sessions.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key(user_id, code, nonce, save_card)},
        )
    except stripe.StripeError as exc:
        return stripe_failure("creating a checkout session", exc)

    get_db().fetch_one(
        "select api.record_checkout_session(%s, %s, %s, %s)",
        [session.id, user_id, code, session.url],
    )
    return redirect(session.url, code=303)


@bp.get("/success")
@login_required
def success():
    """Fulfil the session right away (the webhook may not have arrived) and show the result."""
    session_id = request.args.get("session_id", "")
    if not SESSION_ID_RE.match(session_id):
        abort(404, "No such purchase.")
    # Check ownership before asking Stripe: someone else's session shows nothing.
    owned = get_db().fetch_one(
        "select 1 from api.checkout_sessions where id = %s and user_id = %s",
        [session_id, current_user.id],
    )
    if owned is None:
        abort(404, "No such purchase.")
    try:
        session_json = retrieve_session(get_client(), session_id)
    except stripe.StripeError as exc:
        return stripe_failure("retrieving a checkout session", exc)

    # Applying a Stripe object is the webhook role's right alone, even on the success page.
    with get_webhook_db().connection() as conn:
        result = fulfil_session(conn, session_json, current_user.id)
    _refresh_current_user()
    return render_template("billing/success.html", result=result, verdict=grant_verdict(result))


@bp.get("/cancel")
@login_required
def cancel():
    """Nothing was charged; offer the packages again."""
    return render_template("billing/cancel.html", package=request.args.get("package", ""))


def _refresh_current_user() -> None:
    """Reload the user so the header shows the balance after this request's grant."""
    user = load_user(current_user.id)
    if user is not None:
        user = dataclasses.replace(user, session_token=current_user.session_token)
        current_app.login_manager._update_request_context_with_user(user)  # type: ignore[attr-defined]

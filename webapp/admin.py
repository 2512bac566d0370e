"""Admin pages: balances, a user's ledger and manual adjustments, the Stripe webhook inbox,
payments that were refused, and the ledger audit (on request). Admins only (403 for everyone else).

Once the signed-in user is known to be an admin, the request's transactions run as
tokenbill_admin (SET LOCAL ROLE): the web role itself cannot adjust balances. Every change goes
through api.admin_adjust_balance, which takes the acting admin from their live server-side
session (never from an id the caller supplies) and records who made it and why.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from .billing import money
from .charts import bar_chart
from .db import ADMIN_ROLE, get_db, use_role
from .extensions import login_manager
from .history import KIND_LABELS, before_arg, ledger_page, page_arg, paginate

bp = Blueprint("admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50
EVENT_OUTCOMES = ("received", "processed", "ignored", "rejected", "failed")
PROBLEM_STATUSES = ("rejected", "failed")
# ?outcome= / ?status= filters: a name for a group, or any single value
OUTCOME_FILTERS = {
    "attention": ("ignored", "rejected", "failed"),
    "all": EVENT_OUTCOMES,
    **{o: (o,) for o in EVENT_OUTCOMES},
}
# What the admin reads when api.admin_adjust_balance refuses (by SQLSTATE), not the raw text.
ADJUST_REFUSALS = {
    "TB005": "Not applied: this user has {balance} tokens, and an adjustment may not take the"
    " balance below zero. Debit at most {balance}.",
    "TB003": "Not applied: enter a whole, non-zero number of tokens and a reason of at most 500"
    " characters.",
}
STATUS_FILTERS = {"problems": PROBLEM_STATUSES, **{s: (s,) for s in PROBLEM_STATUSES}}


@bp.before_request
def require_admin() -> Any:
    """Log in first; then only admins get past this point."""
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_admin:
        abort(403)
    use_role(ADMIN_ROLE)
    return None


def _like(term: str) -> str:
    """An ILIKE pattern matching ``term`` literally anywhere."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filter_arg(name: str, default: str, filters: dict[str, tuple[str, ...]]):
    """The chosen filter's name and the values it selects; 400 for an unknown one."""
    choice = request.args.get(name, default)
    if choice not in filters:
        abort(400, f"Unknown {name} filter.")
    return choice, filters[choice]


def _user_or_404(raw_id: str) -> dict[str, Any]:
    try:
        user_id = uuid.UUID(raw_id)
    except ValueError:
        abort(404)
    row = get_db().fetch_one(
        "select id, email, is_admin, balance, created_at from api.accounts where id = %s",
        [user_id],
    )
    if row is None:
        abort(404)
    return row


@bp.get("/")
def index():
    """Users with balances (``?q=`` searches emails); the audit has its own page."""
    query = request.args.get("q", "").strip()
    page = page_arg("page")
    users, more = paginate(
        "select id, email, is_admin, balance, created_at from api.accounts"
        " where %s = '' or email ilike %s order by created_at desc, id",
        [query, _like(query)],
        page,
        PAGE_SIZE,
    )
    return render_template("admin/index.html", users=users, query=query, page=page, more=more)


@bp.route("/audit", methods=["GET", "POST"])
def audit():
    """The ledger audit, run only when an admin asks (POST): it reads the whole ledger."""
    rows = (
        get_db().fetch_all("select * from api.ledger_audit()") if request.method == "POST" else None
    )
    return render_template("admin/audit.html", audit=rows)


def _render_user(user: dict[str, Any], status: int = 200, **form: Any):
    before = before_arg()
    entries, more = ledger_page(user["id"], before, PAGE_SIZE)
    purchases = get_db().fetch_all(
        "select created_at, package_code, amount_cents, currency, tokens_granted,"
        " display_status, reason, payment_intent_id, discount_cents, promotion_code, tax_cents"
        " from api.purchases where user_id = %s"
        " order by created_at desc limit 50",
        [user["id"]],
    )
    return (
        render_template(
            "admin/user.html",
            user=user,
            entries=entries,
            before=before,
            more=more,
            purchases=purchases,
            kind_labels=KIND_LABELS,
            form=form,
        ),
        status,
    )


@bp.get("/users/<user_id>")
def user(user_id: str):
    """One user's balance, purchases and ledger, with the adjustment form."""
    return _render_user(_user_or_404(user_id))


@bp.post("/users/<user_id>/adjust")
def adjust(user_id: str):
    """Credit or debit tokens by hand, with a reason kept in the ledger."""
    target = _user_or_404(user_id)
    raw_delta = request.form.get("delta", "").strip()
    reason = request.form.get("reason", "").strip()
    error = None
    try:
        delta = int(raw_delta)
    except ValueError:
        delta = 0
    if delta == 0:
        error = "Enter a whole, non-zero number of tokens (negative to debit)."
    elif not reason:
        error = "A reason is required; it is shown to the user in their history."
    if error is None:
        try:
            balance = get_db().fetch_one(
                "select api.admin_adjust_balance(%s, %s, %s, %s) as balance",
                [current_user.session_hash, target["id"], delta, reason],
            )["balance"]  # type: ignore[index]
        except psycopg.Error as exc:
            if exc.sqlstate not in ("TB003", "TB005"):
                raise
            error = ADJUST_REFUSALS[exc.sqlstate].format(balance=target["balance"])
        else:
            flash(
                f"Adjusted {target['email']} by {delta:+d} tokens; balance is now {balance}.",
                "success",
            )
            return redirect(url_for("admin.user", user_id=target["id"]), code=303)
    flash(error, "error")
    return _render_user(target, 400, delta=raw_delta, reason=reason)


@bp.get("/events")
def events():
    """The Stripe webhook inbox; by default only events that need a look."""
    outcome, outcomes = _filter_arg("outcome", "attention", OUTCOME_FILTERS)
    page = page_arg("page")
    rows, more = paginate(
        "select id, type, received_at, processed_at, outcome, detail, attempts"
        " from api.stripe_events where outcome = any(%s) order by received_at desc, id",
        [list(outcomes)],
        page,
        PAGE_SIZE,
    )
    return render_template(
        "admin/events.html",
        events=rows,
        outcome=outcome,
        outcomes=EVENT_OUTCOMES,
        page=page,
        more=more,
    )


@bp.get("/payments")
def payments():
    """Payments that granted nothing: rejected (with the reason) or failed."""
    status, statuses = _filter_arg("status", "problems", STATUS_FILTERS)
    page = page_arg("page")
    rows, more = paginate(
        "select p.created_at, p.updated_at, p.payment_intent_id, p.package_code, p.amount_cents,"
        " p.currency, p.status, p.reason, p.user_id, a.email from api.purchases p"
        " left join api.accounts a on a.id = p.user_id"
        " where p.status = any(%s) order by p.updated_at desc, p.id desc",
        [list(statuses)],
        page,
        PAGE_SIZE,
    )
    return render_template(
        "admin/payments.html", payments=rows, status=status, page=page, more=more
    )


def _series(rows: list[dict[str, Any]], value: Any) -> list[tuple[str, float]]:
    """(ISO day, value(row)) for each daily row."""
    return [(row["day"].isoformat(), value(row)) for row in rows]


def _conversion(paid: int, created: int) -> float:
    return 100 * paid / created if created else 0.0


@bp.get("/stats")
def stats():
    """Tokens sold and consumed, revenue and Checkout conversion per day, as SVG charts."""
    days = request.args.get("days", "30")
    if days not in {"7", "30", "90"}:
        abort(400, "days must be 7, 30 or 90.")
    rows = get_db().fetch_all("select * from api.daily_stats(%s)", [int(days)])
    percent = "{:.0f}%".format
    charts = {
        "sold": bar_chart("Tokens sold", _series(rows, lambda r: r["tokens_sold"])),
        "consumed": bar_chart("Tokens consumed", _series(rows, lambda r: r["tokens_consumed"])),
        "revenue": bar_chart("Revenue", _series(rows, lambda r: r["revenue_cents"]), fmt=money),
        "conversion": bar_chart(
            "Checkout conversion (paid / created)",
            _series(rows, lambda r: _conversion(r["sessions_paid"], r["sessions_created"])),
            fmt=percent,
        ),
    }
    created = sum(r["sessions_created"] for r in rows)
    paid = sum(r["sessions_paid"] for r in rows)
    totals = {
        "tokens_sold": sum(r["tokens_sold"] for r in rows),
        "tokens_consumed": sum(r["tokens_consumed"] for r in rows),
        "revenue_cents": sum(r["revenue_cents"] for r in rows),
        "conversion": percent(_conversion(paid, created)) if created else "–",
    }
    return render_template("admin/stats.html", charts=charts, totals=totals, days=int(days))

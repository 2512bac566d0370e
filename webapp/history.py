"""Purchase and token history of the signed-in user, newest first, paginated with ``?page=``.

Purchases and token movements are read from api.purchases and api.ledger_entries, always
filtered by the session's user id, so nobody can page into someone else's rows.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import Blueprint, render_template, request
from flask_login import current_user, login_required

from .db import get_db

bp = Blueprint("history", __name__, url_prefix="/history")

PAGE_SIZE = 20
KIND_LABELS = {
    "purchase": "Purchase",
    "consumption": "Agent request",
    "consumption_refund": "Failed request refunded",
    "clawback": "Taken back (refund or dispute)",
    "clawback_reversal": "Given back (dispute won)",
    "admin_adjustment": "Adjustment by support",
}


def page_arg(name: str) -> int:
    """A 1-based page number from the query string; junk and values below 1 mean page 1."""
    return max(1, request.args.get(name, 1, type=int) or 1)


def paginate(query: str, params: list[Any], page: int, size: int = PAGE_SIZE):
    """One page of rows (offset paging), and whether a next page exists."""
    rows = get_db().fetch_all(f"{query} limit %s offset %s", [*params, size + 1, (page - 1) * size])
    return rows[:size], len(rows) > size


def ledger_page(user_id: UUID, page: int, size: int = PAGE_SIZE):
    """A page of the user's token movements (shared with the admin user page)."""
    return paginate(
        "select id, kind, delta, balance_after, request_id, reason, payment_intent_id,"
        " dispute_id, created_at from api.ledger_entries where user_id = %s order by id desc",
        [user_id],
        page,
        size,
    )


@bp.get("/")
@login_required
def index():
    """Purchases (``?purchases_page=``) and token activity (``?page=``) of the current user."""
    page, purchases_page = page_arg("page"), page_arg("purchases_page")
    purchases, more_purchases = paginate(
        "select p.created_at, p.package_code, k.name as package_name, p.amount_cents,"
        " p.currency, p.tokens_granted, p.tokens_clawed, p.refunded_cents, p.receipt_url,"
        " p.display_status from api.purchases p left join api.packages k on k.code = p.package_code"
        " where p.user_id = %s order by p.created_at desc, p.id desc",
        [current_user.id],
        purchases_page,
    )
    entries, more_entries = ledger_page(current_user.id, page)
    return render_template(
        "history/index.html",
        purchases=purchases,
        purchases_page=purchases_page,
        more_purchases=more_purchases,
        entries=entries,
        page=page,
        more_entries=more_entries,
        kind_labels=KIND_LABELS,
    )

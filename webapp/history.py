"""Purchase and token history of the signed-in user, newest first.

Token activity pages by keyset (``?before=<ledger id>``): every page costs one index range
scan however old it is, where OFFSET would walk all newer rows (docs/performance.md).

Purchases and token movements are read from api.purchases and api.ledger_entries, always
filtered by the session's user id, so nobody can page into someone else's rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from flask import Blueprint, abort, render_template, request
from flask_login import current_user, login_required

from .db import MAX_ID, get_db

bp = Blueprint("history", __name__, url_prefix="/history")

PAGE_SIZE = 20
KIND_LABELS = {
    "purchase": "Purchase",
    "consumption": "Agent request",
    "consumption_refund": "Failed request refunded",
    "reserve": "Agent request (price reserved)",
    "settle": "Settled: charged, unused reservation returned",
    "release": "Nothing delivered: reservation returned",
    "clawback": "Taken back (refund or dispute)",
    "clawback_reversal": "Given back (dispute won)",
    "admin_adjustment": "Adjustment by support",
}


@bp.app_template_filter("utc")
def utc(moment: dt.datetime, seconds: bool = False) -> str:
    """A timestamp in UTC with the zone named (``2026-12-02 03:10 UTC``): never a bare clock."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


MAX_PAGE = 100_000  # far beyond any real history; keeps OFFSET inside bigint


def page_arg(name: str) -> int:
    """A 1-based page number from the query string; junk and values below 1 mean page 1.

    A number too large to be a page is a client mistake: 404, never a database error.
    """
    page = max(1, request.args.get(name, 1, type=int) or 1)
    if page > MAX_PAGE:
        abort(404, "No such page.")
    return page


def paginate(query: str, params: list[Any], page: int, size: int = PAGE_SIZE):
    """One page of rows (offset paging), and whether a next page exists."""
    rows = get_db().fetch_all(f"{query} limit %s offset %s", [*params, size + 1, (page - 1) * size])
    return rows[:size], len(rows) > size


def before_arg(name: str = "before") -> int | None:
    """A ledger id cursor from the query string; junk or absent means the newest page."""
    value = request.args.get(name, type=int)
    if value is not None and value > MAX_ID:
        abort(400, f"{name} is not a ledger id.")
    return value if value is not None and value > 0 else None


LEDGER_COLUMNS = (
    "select id, kind, delta, balance_after, request_id, reason, payment_intent_id,"
    " dispute_id, created_at from api.ledger_entries where user_id = %s"
)


def ledger_page(user_id: UUID, before: int | None, size: int = PAGE_SIZE):
    """The user's token movements older than ``before`` (newest first), and whether more exist.

    Shared with the admin user page. Two query forms so that the cursor is an index condition
    on ledger_user_idx (user_id, id desc), not a filter.
    """
    if before is None:
        query, params = f"{LEDGER_COLUMNS} order by id desc limit %s", [user_id, size + 1]
    else:
        query = f"{LEDGER_COLUMNS} and id < %s order by id desc limit %s"
        params = [user_id, before, size + 1]
    rows = get_db().fetch_all(query, params)
    return rows[:size], len(rows) > size


@bp.get("/")
@login_required
def index():
    """Purchases (``?purchases_page=``) and token activity (``?before=``) of the current user."""
    before, purchases_page = before_arg(), page_arg("purchases_page")
    purchases, more_purchases = paginate(
        "select p.created_at, p.package_code, k.name as package_name, p.amount_cents,"
        " p.currency, p.tokens_granted, p.tokens_clawed, p.refunded_cents, p.receipt_url,"
        " p.display_status, p.reason, p.discount_cents, p.tax_cents, p.invoice_url,"
        " p.invoice_pdf_url from api.purchases p"
        " left join api.packages k on k.code = p.package_code"
        " where p.user_id = %s order by p.created_at desc, p.id desc",
        [current_user.id],
        purchases_page,
    )
    entries, more_entries = ledger_page(current_user.id, before)
    return render_template(
        "history/index.html",
        purchases=purchases,
        purchases_page=purchases_page,
        more_purchases=more_purchases,
        entries=entries,
        before=before,
        more_entries=more_entries,
        kind_labels=KIND_LABELS,
    )

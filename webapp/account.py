"""Account settings: the low-balance alert threshold, and dismissing the header alert."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from .db import get_db

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.get("/settings")
@login_required
def settings():
    return render_template("account/settings.html")


@bp.post("/settings")
@login_required
def save_settings():
    """Set the threshold below which a consumption records a low-balance alert (0 = off)."""
    raw = request.form.get("low_balance_threshold", "").strip()
    if not raw.isdigit() or int(raw) > 1_000_000:
        flash("The alert threshold must be a whole number from 0 to 1000000.", "error")
        return render_template("account/settings.html"), 400
    get_db().fetch_one("select api.set_low_balance_threshold(%s, %s)", [current_user.id, int(raw)])
    flash(
        f"Saved: we warn you when your balance drops below {int(raw)} tokens."
        if int(raw)
        else "Saved: low-balance alerts are off.",
        "success",
    )
    return redirect(url_for("account.settings"), code=303)


@bp.post("/alerts/dismiss")
@login_required
def dismiss_alerts():
    """Acknowledge the open low-balance alerts; back to where the user was."""
    get_db().fetch_one("select api.acknowledge_low_balance_alerts(%s)", [current_user.id])
    target = request.referrer or ""
    if not target.startswith(request.host_url):
        target = url_for("agent.chat")
    return redirect(target, code=303)

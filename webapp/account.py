"""Account settings: the low-balance alert threshold, the password, dismissing the alert."""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from .auth import MIN_PASSWORD, check_password, credentials, hasher
from .autotopup import settings_context
from .db import get_db
from .extensions import limiter

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.get("/settings")
@login_required
def settings():
    return render_template("account/settings.html", **settings_context())


@bp.post("/settings")
@login_required
def save_settings():
    """Set the threshold below which a consumption records a low-balance alert (0 = off)."""
    raw = request.form.get("low_balance_threshold", "").strip()
    if not raw.isdigit() or int(raw) > 1_000_000:
        flash("The alert threshold must be a whole number from 0 to 1000000.", "error")
        return render_template("account/settings.html", **settings_context()), 400
    get_db().fetch_one("select api.set_low_balance_threshold(%s, %s)", [current_user.id, int(raw)])
    flash(
        f"Saved: we warn you when your balance drops below {int(raw)} tokens."
        if int(raw)
        else "Saved: low-balance alerts are off.",
        "success",
    )
    return redirect(url_for("account.settings"), code=303)


def _password_limit() -> str:
    return current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"]


def _password_key() -> str:
    """Per account: a stolen cookie must not become unlimited guesses at the password."""
    return f"password-change:{getattr(current_user, 'id', None) or request.remote_addr}"


def _refused(response: Response) -> bool:
    return response.status_code == 400


@bp.post("/password")
@limiter.limit(_password_limit, key_func=_password_key, deduct_when=_refused)
@login_required
def change_password():
    """Change the password; PostgreSQL ends every other session of the account."""
    current = request.form.get("current_password", "")
    new = request.form.get("new_password", "")
    row = credentials(current_user.email)
    if not check_password(row["password_hash"] if row else None, current):
        flash("The current password is not correct.", "error")
        return render_template("account/settings.html", **settings_context()), 400
    if len(new) < MIN_PASSWORD:
        flash(f"Password must be at least {MIN_PASSWORD} characters.", "error")
        return render_template("account/settings.html", **settings_context()), 400
    ended = get_db().fetch_one(
        "select api.change_password(%s, %s) as ended", [current_user.session_hash, hasher.hash(new)]
    )["ended"]  # type: ignore[index]
    flash(f"Password changed; {ended} other session(s) signed out.", "success")
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

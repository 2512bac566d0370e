"""Create and revoke API keys for programmatic access to the agent endpoint.

The secret is shown once, in the response to the POST that made it (never put in the session
or a redirect), and only its SHA-256 is stored.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from .api_auth import new_api_key
from .db import get_db

bp = Blueprint("api_keys", __name__, url_prefix="/account/keys")

MAX_NAME = 100


def _keys() -> list[dict]:
    return get_db().fetch_all(
        "select id, name, prefix, created_at, last_used_at, revoked_at from api.api_keys"
        " where user_id = %s order by created_at desc",
        [current_user.id],
    )


@bp.get("/")
@login_required
def index():
    """The user's keys, live and revoked."""
    return render_template("account/keys.html", keys=_keys())


@bp.post("/")
@login_required
def create():
    """Make a key and show its secret this once."""
    name = request.form.get("name", "").strip()
    if not name or len(name) > MAX_NAME:
        flash(f"Give the key a name of 1 to {MAX_NAME} characters.", "error")
        return render_template("account/keys.html", keys=_keys(), name=name), 400
    secret, prefix, key_hash = new_api_key()
    get_db().fetch_one(
        "select api.create_api_key(%s, %s, %s, %s) as id",
        [current_user.id, name, prefix, key_hash],
    )
    response = render_template("account/keys.html", keys=_keys(), new_secret=secret, new_name=name)
    return response, 201, {"Cache-Control": "no-store"}


@bp.post("/<key_id>/revoke")
@login_required
def revoke(key_id: str):
    """Revoke one of the user's own live keys; anyone else's (or an unknown id) is 404."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        abort(404)
    row = get_db().fetch_one(
        "select api.revoke_api_key(%s, %s) as revoked", [current_user.id, parsed]
    )
    if not row or not row["revoked"]:
        abort(404)
    flash("Key revoked. Requests using it are now refused.", "success")
    return redirect(url_for("api_keys.index"), code=303)

"""Admin pages (filled in by the pages work)."""

from __future__ import annotations

from flask import Blueprint, abort
from flask_login import current_user, login_required

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/")
@login_required
def index():
    if not current_user.is_admin:
        abort(403)
    abort(501)

"""Purchase and consumption history (filled in by the pages work)."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("history", __name__, url_prefix="/history")


@bp.get("/")
@login_required
def index():
    return render_template("error.html", status=501, message="Not built yet"), 501

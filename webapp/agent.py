"""The chat page and the metered agent endpoint (filled in by the agent work)."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("agent", __name__)


@bp.get("/")
@login_required
def chat():
    return render_template("agent/chat.html")

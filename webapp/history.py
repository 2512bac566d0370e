"""Purchase and consumption history (filled in by the pages work)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("history", __name__, url_prefix="/history")

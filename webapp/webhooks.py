"""POST /api/webhook/stripe (filled in by the webhook work)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webhooks", __name__)

"""Buying tokens through Stripe-hosted Checkout (filled in by the Checkout work)."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("billing", __name__, url_prefix="/billing")


@bp.get("/buy")
@login_required
def buy():
    return render_template("error.html", status=501, message="Not built yet"), 501

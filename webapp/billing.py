"""Buying tokens through Stripe-hosted Checkout (filled in by the Checkout work)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("billing", __name__)

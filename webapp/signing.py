"""Stripe's webhook signature scheme, written once: ``t=<unix>,v1=<hex HMAC-SHA256>``.

The HMAC covers ``"<t>." + body`` with the shared secret. The alert notifier signs its own
webhooks this way (so receivers can reuse a Stripe verifier), and the workshop's emulator and
event fixtures sign Stripe events with it; the app verifies Stripe's with the Stripe SDK.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def signature_header(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The signature header for ``body``: ``t=<unix>,v1=<hex hmac>``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"

"""Settings, read once from the environment (and `.env` via python-dotenv).

Every variable is listed with a comment in `.env.example`. Secrets are never logged.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

log = logging.getLogger(__name__)


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def from_env() -> dict[str, Any]:
    """Build the Flask config mapping from environment variables."""
    secret_key = os.environ.get("SECRET_KEY")
    if not secret_key:
        # Fine for a laptop; sessions do not survive a restart. Production must set it.
        log.warning("SECRET_KEY is not set: using a random key for this process")
        secret_key = secrets.token_urlsafe(32)
    stripe_key = os.environ.get("STRIPE_SECRET_KEY", "")
    return {
        "SECRET_KEY": secret_key,
        "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
        "DATABASE_ROLE": os.environ.get("DATABASE_ROLE", "tokenbill_app"),
        "DATABASE_POOL_MAX": _int("DATABASE_POOL_MAX", 10),
        "STRIPE_SECRET_KEY": stripe_key,
        "STRIPE_WEBHOOK_SECRET": os.environ.get("STRIPE_WEBHOOK_SECRET", ""),
        "STRIPE_API_BASE": os.environ.get("STRIPE_API_BASE", ""),
        # Stripe waits ~20 s for an answer: better to fail fast with 500 and let it retry.
        "WEBHOOK_DB_TIMEOUT_SECONDS": float(os.environ.get("WEBHOOK_DB_TIMEOUT_SECONDS") or 10),
        "PAYMENTS_SIMULATED": _flag("PAYMENTS_SIMULATED", default=False),
        "PUBLIC_BASE_URL": os.environ.get("PUBLIC_BASE_URL", "").rstrip("/"),
        # prices live in the database (tokenbill.prices); these bound what one call may cost us
        "AGENT_MAX_TOKENS": _int("AGENT_MAX_TOKENS", 1024),
        "AGENT_HISTORY_CHARS": _int("AGENT_HISTORY_CHARS", 24000),
        "AGENT_MAX_MESSAGE_CHARS": _int("AGENT_MAX_MESSAGE_CHARS", 20000),
        "AGENT_HOLD_SECONDS": _int("AGENT_HOLD_SECONDS", 0),
        "AGENT_RATE_LIMIT": os.environ.get("AGENT_RATE_LIMIT", "5 per minute"),
        "AGENT_TIMEOUT_SECONDS": _int("AGENT_TIMEOUT_SECONDS", 60),
        "AUTH_RATE_LIMIT": os.environ.get("AUTH_RATE_LIMIT", "10 per minute"),
        "RATELIMIT_STORAGE_URI": os.environ.get("RATELIMIT_STORAGE_URI", "memory://"),
        "LLM_BASE_URL": os.environ.get("LLM_BASE_URL", ""),
        "LLM_API_KEY": os.environ.get("LLM_API_KEY", ""),
        "LLM_MODEL": os.environ.get("LLM_MODEL", ""),
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN", ""),
        "SESSION_COOKIE_SECURE": _flag("SESSION_COOKIE_SECURE", default=False),
        "REMEMBER_COOKIE_SECURE": _flag("SESSION_COOKIE_SECURE", default=False),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "WTF_CSRF_TIME_LIMIT": None,
    }

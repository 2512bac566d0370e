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


class ConfigError(RuntimeError):
    """A setting is missing or malformed: the message says which and how to fix it."""


MISSING_DATABASE_URL = (
    "DATABASE_URL is not set: run `bash scripts/run` once (it writes its embedded database's"
    " URL to .env) or set it in the environment"
)


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None


def from_env(cli: bool = False) -> dict[str, Any]:
    """Build the Flask config mapping from environment variables.

    ``cli``: loaded by an operator command, which signs no sessions: no SECRET_KEY warning.
    """
    secret_key = os.environ.get("SECRET_KEY")
    if not secret_key:
        # Fine for a laptop; sessions do not survive a restart. Production must set it.
        if not cli:
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
        "AGENT_TOKEN_COST": _int("AGENT_TOKEN_COST", 1),
        # The buyer pays per message: the limit protects the service from floods, not the
        # price, so it must not get in the way of a person chatting (or a script with a key).
        "AGENT_RATE_LIMIT": os.environ.get("AGENT_RATE_LIMIT", "60 per minute"),
        "AGENT_TIMEOUT_SECONDS": _int("AGENT_TIMEOUT_SECONDS", 60),
        "AUTH_RATE_LIMIT": os.environ.get("AUTH_RATE_LIMIT", "10 per minute"),
        # memory:// counts per process: with several gunicorn workers every limit would be
        # multiplied by their number, so those need shared storage (redis://host:6379/0).
        "RATELIMIT_STORAGE_URI": os.environ.get("RATELIMIT_STORAGE_URI", "memory://"),
        # Exact: never more than N requests in any window, not 2N across a window boundary.
        "RATELIMIT_STRATEGY": "moving-window",
        # Redis down: keep limiting in each worker's memory (and serve) until it is back.
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
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

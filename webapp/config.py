"""Settings, read once from the environment (and `.env` via python-dotenv), and the checks
that keep development defaults out of production.

Every variable is listed with a comment in `.env.example`. Secrets are never logged.
TOKENBILL_ENV is ``production`` unless set to ``development`` (scripts/run, compose, tests),
so a forgotten setting fails closed.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


class ConfigError(RuntimeError):
    """A setting that must not reach a running app; the message is one line for operators."""


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


# Values published in this repository (compose, docs, the emulator): never secrets.
KNOWN_SECRET_KEYS = frozenset(
    {"compose-dev-only-secret-key-change-me", "change-me", "changeme", "secret", "dev", "test"}
)
EMULATOR_WEBHOOK_SECRET = "whsec_emulator_local"
EMULATOR_STRIPE_KEY = "sk_test_emulator"
MIN_SECRET_KEY_LENGTH = 32
# The duties that hold credentials the pages' login must not: each needs its own login outside
# development (docs/security.md), and says why in the one line that refuses to start.
OWN_LOGINS = {
    "WEBHOOK_DATABASE_URL": "Stripe events need their own login",
    "AUTH_DATABASE_URL": "password hashes need their own login, out of the web login's reach",
}


def from_env() -> dict[str, Any]:
    """Build the Flask config mapping from environment variables."""
    stripe_key = os.environ.get("STRIPE_SECRET_KEY", "")
    return {
        "TOKENBILL_ENV": os.environ.get("TOKENBILL_ENV", "production").strip().lower(),
        "SECRET_KEY": os.environ.get("SECRET_KEY", ""),
        "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
        "DATABASE_ROLE": os.environ.get("DATABASE_ROLE", "tokenbill_app"),
        "WEBHOOK_DATABASE_URL": os.environ.get("WEBHOOK_DATABASE_URL", ""),
        "WEBHOOK_DATABASE_ROLE": "tokenbill_webhook",
        # password hashes: the login and change-password checks only (0031); else DATABASE_URL
        "AUTH_DATABASE_URL": os.environ.get("AUTH_DATABASE_URL", ""),
        "AUTH_DATABASE_ROLE": "tokenbill_auth",
        # the background loops' own login (flask --app webapp workers); else DATABASE_URL
        "WORKER_DATABASE_URL": os.environ.get("WORKER_DATABASE_URL", ""),
        "ADMIN_DATABASE_ROLE": "tokenbill_admin",
        "DATABASE_POOL_MAX": _int("DATABASE_POOL_MAX", 10),
        # behind PgBouncer in transaction mode: no server-side prepared statements, the role
        # set in every transaction (docs/scaling.md)
        "DATABASE_TRANSACTION_POOLER": _flag("DATABASE_TRANSACTION_POOLER", default=False),
        "STRIPE_SECRET_KEY": stripe_key,
        "STRIPE_WEBHOOK_SECRET": os.environ.get("STRIPE_WEBHOOK_SECRET", ""),
        "STRIPE_API_BASE": os.environ.get("STRIPE_API_BASE", ""),
        # Stripe waits ~20 s for an answer: better to fail fast with 500 and let it retry.
        "WEBHOOK_DB_TIMEOUT_SECONDS": float(os.environ.get("WEBHOOK_DB_TIMEOUT_SECONDS") or 10),
        "PAYMENTS_SIMULATED": _flag("PAYMENTS_SIMULATED", default=False),
        # Checkout options (docs/stripe.md): an invoice for every purchase, promotion codes,
        # Stripe Tax (needs tax settings in the dashboard first).
        # One Stripe Customer per account (saved cards, auto top-up); unset: see customers_enabled.
        "STRIPE_CUSTOMERS": (
            _flag("STRIPE_CUSTOMERS") if os.environ.get("STRIPE_CUSTOMERS", "") != "" else None
        ),
        "INVOICE_CREATION": _flag("INVOICE_CREATION", default=True),
        "ALLOW_PROMOTION_CODES": _flag("ALLOW_PROMOTION_CODES", default=False),
        "AUTOMATIC_TAX": _flag("AUTOMATIC_TAX", default=False),
        "PUBLIC_BASE_URL": os.environ.get("PUBLIC_BASE_URL", "").rstrip("/"),
        # prices live in the database (tokenbill.prices); these bound what one call may cost us
        "AGENT_MAX_TOKENS": _int("AGENT_MAX_TOKENS", 1024),
        "AGENT_HISTORY_CHARS": _int("AGENT_HISTORY_CHARS", 24000),
        "AGENT_MAX_MESSAGE_CHARS": _int("AGENT_MAX_MESSAGE_CHARS", 20000),
        # a conversation is shown a page at a time (api.conversation_page caps it at 100)
        "AGENT_PAGE_EXCHANGES": _int("AGENT_PAGE_EXCHANGES", 50),
        "AGENT_HOLD_SECONDS": _int("AGENT_HOLD_SECONDS", 0),
        # The buyer pays per message: the limit protects the service from floods, not the
        # price, so it must not get in the way of a person chatting (or a script with a key).
        "AGENT_RATE_LIMIT": os.environ.get("AGENT_RATE_LIMIT", "60 per minute"),
        "AGENT_TIMEOUT_SECONDS": _int("AGENT_TIMEOUT_SECONDS", 60),
        "AUTH_RATE_LIMIT": os.environ.get("AUTH_RATE_LIMIT", "10 per minute"),
        "LOGIN_ACCOUNT_RATE_LIMIT": os.environ.get(
            "LOGIN_ACCOUNT_RATE_LIMIT", "5 per minute;20 per hour"
        ),
        "CHECKOUT_RATE_LIMIT": os.environ.get("CHECKOUT_RATE_LIMIT", "10 per minute;30 per hour"),
        # Bodies: forms and agent messages are small; Stripe events stay under 512 KB.
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 128 * 1024),
        "WEBHOOK_MAX_CONTENT_LENGTH": 512 * 1024,
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


def is_development(config: Mapping[str, Any]) -> bool:
    return config.get("TOKENBILL_ENV") == "development"


def check(config: dict[str, Any], cli: bool = False) -> None:
    """Refuse settings that must never run, with one line saying which and why.

    In development a missing SECRET_KEY becomes a random per-process key and the webhook and
    auth pools default to DATABASE_URL; elsewhere all must be set explicitly. ``cli``: an
    operator command signs no sessions, applies no Stripe events and checks no passwords (it
    connects as the owner), so it needs neither SECRET_KEY nor the OWN_LOGINS URLs.
    """
    env = config.get("TOKENBILL_ENV")
    if env not in ("development", "production"):
        raise ConfigError(f"TOKENBILL_ENV must be 'development' or 'production', not {env!r}")
    dev = is_development(config)
    key = config.get("SECRET_KEY") or ""
    if not key and cli:
        config["SECRET_KEY"] = secrets.token_urlsafe(32)
    elif not key:
        if not dev:
            raise ConfigError(
                "SECRET_KEY is not set: every worker would sign sessions with its own key"
            )
        log.warning("SECRET_KEY is not set: using a random key for this process")
        config["SECRET_KEY"] = secrets.token_urlsafe(32)
    elif not dev and (key in KNOWN_SECRET_KEYS or len(key) < MIN_SECRET_KEY_LENGTH):
        raise ConfigError(
            f"SECRET_KEY is a published default or shorter than {MIN_SECRET_KEY_LENGTH}"
            " characters: set a long random one"
        )
    for name, why in OWN_LOGINS.items():
        if not config.get(name) and not (dev or cli):
            raise ConfigError(f"{name} is not set: {why} (docs/security.md)")
    stripe_key = config.get("STRIPE_SECRET_KEY") or ""
    webhook_secret = config.get("STRIPE_WEBHOOK_SECRET") or ""
    if webhook_secret == EMULATOR_WEBHOOK_SECRET and stripe_key != EMULATOR_STRIPE_KEY:
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET is the emulator's published secret but the Stripe key is not"
            " the emulator's: anyone could sign events"
        )
    if webhook_secret == EMULATOR_WEBHOOK_SECRET and not dev:
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET is the emulator's published secret and TOKENBILL_ENV is not"
            " development: anyone could sign events"
        )
    if stripe_key.startswith("sk_live_") or stripe_key.startswith("rk_live_"):
        if config.get("STRIPE_API_BASE"):
            raise ConfigError("a live Stripe key must not be sent to STRIPE_API_BASE")
        if config.get("PAYMENTS_SIMULATED"):
            raise ConfigError("a live Stripe key cannot be used with PAYMENTS_SIMULATED")


def customers_enabled(config: Mapping[str, Any]) -> bool:
    """STRIPE_CUSTOMERS, on unless set to 0 (then Checkout Sessions name the buyer's email and
    no card can be saved for auto top-up). The emulator knows Customers too."""
    explicit = config.get("STRIPE_CUSTOMERS")
    return True if explicit is None else bool(explicit)


def stripe_livemode(config: Mapping[str, Any]) -> bool | None:
    """The mode of the configured key (None without a key): events must match it."""
    key = config.get("STRIPE_SECRET_KEY") or ""
    if not key:
        return None
    return "_live_" in key

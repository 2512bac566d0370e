"""Development defaults are refused outside development, with one line saying why."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from tests.conftest import PASSWORD, balance_of
from tests.support import stripe_events as ev
from webapp.config import ConfigError

STRONG = secrets.token_urlsafe(32)


def refused(make_app, **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        make_app(**overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def production(database_url):
    return {
        "TOKENBILL_ENV": "production",
        "WEBHOOK_DATABASE_URL": database_url,
        "AUTH_DATABASE_URL": database_url,
        "SECRET_KEY": STRONG,
    }


@pytest.mark.parametrize(
    "key", ["", "compose-dev-only-secret-key-change-me", "test-secret-key", "short"]
)
def test_production_refuses_a_missing_or_known_secret_key(make_app, production, key):
    assert "SECRET_KEY" in refused(make_app, **{**production, "SECRET_KEY": key})


def test_production_needs_its_own_webhook_login(make_app, production):
    assert "WEBHOOK_DATABASE_URL" in refused(make_app, **{**production, "WEBHOOK_DATABASE_URL": ""})


def test_production_needs_its_own_auth_login(make_app, production):
    """Without it every page's login could read password hashes (docs/security.md)."""
    message = refused(make_app, **{**production, "AUTH_DATABASE_URL": ""})
    assert "AUTH_DATABASE_URL" in message


def test_development_checks_passwords_through_database_url_without_an_auth_login(make_app, member):
    _, email = member()
    client = make_app(AUTH_DATABASE_URL="").test_client()
    response = client.post("/auth/login", data={"email": email, "password": PASSWORD})
    assert response.status_code == 303


def test_production_starts_with_proper_settings(make_app, production):
    assert make_app(**production).config["SECRET_KEY"] == STRONG


def test_development_makes_a_random_key_when_none_is_set(make_app):
    app = make_app(SECRET_KEY="")
    assert len(app.config["SECRET_KEY"]) >= 32


def test_emulator_webhook_secret_with_another_stripe_key_is_refused(make_app):
    # the audit: a self-signed event with the repo's secret granted 600 tokens
    message = refused(
        make_app, STRIPE_WEBHOOK_SECRET="whsec_emulator_local", STRIPE_SECRET_KEY="sk_test_real"
    )
    assert "STRIPE_WEBHOOK_SECRET" in message
    make_app(STRIPE_WEBHOOK_SECRET="whsec_emulator_local", STRIPE_SECRET_KEY="sk_test_emulator")


def test_production_refuses_the_emulators_published_webhook_secret(make_app, production):
    """With the emulator's key too, outside development anyone who read this repository could
    sign a payment event (and the emulator answers every charge, auto top-ups included)."""
    emulator = {
        "STRIPE_WEBHOOK_SECRET": "whsec_emulator_local",
        "STRIPE_SECRET_KEY": "sk_test_emulator",
    }
    assert "STRIPE_WEBHOOK_SECRET" in refused(make_app, **production, **emulator)


@pytest.mark.parametrize(
    "extra", [{"STRIPE_API_BASE": "http://127.0.0.1:12111"}, {"PAYMENTS_SIMULATED": True}]
)
def test_a_live_key_never_meets_a_fake_stripe(make_app, extra):
    overrides = {"STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_API_BASE": "", **extra}
    assert "live Stripe key" in refused(make_app, **overrides)


def test_unknown_environment_name_is_refused(make_app):
    assert "TOKENBILL_ENV" in refused(make_app, TOKENBILL_ENV="prod")


def test_gunicorn_style_start_fails_with_the_one_line(database_url):
    """What an operator sees: the factory raising with the reason (no SECRET_KEY here)."""
    # FLASK_SKIP_DOTENV: as every app of the suite, blind to a developer's .env (its SECRET_KEY)
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin", "FLASK_SKIP_DOTENV": "1"}
    code = "from webapp import create_app; create_app()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "ConfigError: SECRET_KEY is not set" in proc.stderr


def test_event_of_the_other_mode_is_recorded_not_applied(make_app, owner, make_user):
    client = make_app(STRIPE_SECRET_KEY="sk_live_" + "0" * 24, STRIPE_API_BASE="").test_client()
    user = make_user()
    evt = ev.payment_intent_succeeded(user, "tokens_600", 2000)  # livemode false: a test event
    body, header = ev.signed(evt, "whsec_test_tokenbill_secret")
    response = client.post("/api/webhook/stripe", data=body, headers={"Stripe-Signature": header})
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "rejected"
    assert "livemode mismatch" in response.get_json()["detail"]
    assert balance_of(owner, user) == 0

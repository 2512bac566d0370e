"""tokenbill: sell AI-agent tokens through Stripe Checkout and meter every agent request.

``create_app()`` only wires things together: configuration, the database pool, extensions
and one blueprint per area. Production: ``gunicorn "webapp:create_app()"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from dotenv import load_dotenv
from flask import Flask
from flask.helpers import get_load_dotenv

from . import config, db, errors, security
from .extensions import csrf, limiter, login_manager

ROOT = Path(__file__).resolve().parent.parent
# The checkout's `.env` (scripts/run writes it, naming this checkout's dev database and logins).
DOTENV = ROOT / ".env"


def _load_dotenv() -> None:
    """Read `.env` into the environment (never over a variable already set), unless
    FLASK_SKIP_DOTENV says not to, as the `flask` command itself does. The test suite sets it:
    a developer's `.env` names the dev database, and a test's app must not reach it."""
    if get_load_dotenv():
        load_dotenv(DOTENV)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app from the environment (or ``test_config`` overrides)."""
    _load_dotenv()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = Flask(
        __name__,
        template_folder=str(ROOT / "frontend" / "templates"),
        static_folder=str(ROOT / "frontend" / "static"),
    )
    # Loaded by the `flask` command: configuration trouble must be one clear line, not a
    # traceback, and `flask --help` must still list the commands. Those that need the database
    # say so themselves (webapp.cli.operator_connection).
    from_cli = click.get_current_context(silent=True) is not None
    try:
        app.config.from_mapping(config.from_env())
    except config.ConfigError as exc:
        if from_cli:
            raise click.ClickException(str(exc)) from None
        raise
    if test_config:
        app.config.update(test_config)
    if not app.config["DATABASE_URL"] and not from_cli:
        raise config.ConfigError(config.MISSING_DATABASE_URL)
    try:
        config.check(app.config, cli=from_cli)
    except config.ConfigError as exc:
        if from_cli:
            raise click.ClickException(str(exc)) from None
        raise

    db.init_app(app)
    security.init_app(app)  # first: its body check runs before anything reads the body
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    limiter.init_app(app)
    errors.register(app)

    from . import (  # noqa: F401
        account,
        admin,
        agent,
        api_keys,
        auth,
        autotopup,
        billing,
        cli,
        health,
        history,
        metrics,
        users,
        webhooks,
    )

    blueprints = (
        health,
        auth,
        billing,
        webhooks,
        agent,
        history,
        account,
        autotopup,
        api_keys,
        admin,
    )
    for module in (*blueprints, metrics):
        app.register_blueprint(module.bp)
    metrics.init_app(app)
    cli.init_app(app)

    @app.context_processor
    def inject_settings() -> dict[str, Any]:
        return {"payments_simulated": app.config["PAYMENTS_SIMULATED"]}

    return app

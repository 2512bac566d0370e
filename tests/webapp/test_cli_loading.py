"""The app as the `flask` command loads it: without DATABASE_URL it still loads (so --help and
the commands can say what is missing in one line), but it never serves from libpq's defaults."""

from __future__ import annotations

from typing import Any

import click
import pytest

from webapp import create_app
from webapp.config import ConfigError
from webapp.db import get_db


def test_outside_the_flask_command_a_missing_url_is_refused(app_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is not set"):
        create_app({**app_config, "DATABASE_URL": ""})


def test_loaded_by_flask_without_a_url_it_serves_no_default_database(
    app_config: dict[str, Any],
) -> None:
    with click.Context(click.Command("run")):  # what `flask run` has around create_app
        app = create_app({**app_config, "DATABASE_URL": ""})
    health = app.test_client().get("/healthz")
    assert health.status_code == 503
    assert health.get_json() == {"status": "unavailable", "database": "not configured"}
    with app.app_context(), pytest.raises(ConfigError, match="DATABASE_URL is not set"):
        get_db()


def test_malformed_settings_are_one_line_for_the_flask_command(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_POOL_MAX", "ten")
    with pytest.raises(ConfigError, match="DATABASE_POOL_MAX must be a whole number"):
        create_app(app_config)
    with (
        click.Context(click.Command("create-admin")),
        pytest.raises(click.ClickException, match="DATABASE_POOL_MAX must be a whole number"),
    ):
        create_app(app_config)

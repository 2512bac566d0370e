"""A developer's `.env` never reaches the suite's apps.

`bash scripts/run` writes `.env` naming this checkout's dev database and its logins; the app
reads it so that `flask` commands and gunicorn need no exports. The suite builds its apps with
only DATABASE_URL overridden, so before FLASK_SKIP_DOTENV was honoured, running the suite after
`scripts/run` sent a test app's webhooks to the dev database (WEBHOOK_DATABASE_URL from `.env`):
the grant found no such user there and the e2e purchase showed a balance of 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import webapp

ELSEWHERE = "postgresql://dotenv-user@127.0.0.1:9/the_dev_database"


@pytest.fixture
def dev_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `.env` like scripts/run's, in place of the checkout's; whatever it loads into
    os.environ is removed after the test."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"WEBHOOK_DATABASE_URL={ELSEWHERE}\nWORKER_DATABASE_URL={ELSEWHERE}\n")
    monkeypatch.setattr(webapp, "DOTENV", env_file)
    for key in ("WEBHOOK_DATABASE_URL", "WORKER_DATABASE_URL"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    return env_file


def test_the_suite_runs_with_dotenv_skipped() -> None:
    assert os.environ.get("FLASK_SKIP_DOTENV") == "1"


def test_a_test_app_does_not_read_the_developers_dotenv(make_app, dev_dotenv) -> None:
    app = make_app()
    assert app.config["WEBHOOK_DATABASE_URL"] == ""
    assert app.config["WORKER_DATABASE_URL"] == ""
    assert "WEBHOOK_DATABASE_URL" not in os.environ


def test_outside_the_suite_the_app_reads_dotenv(make_app, dev_dotenv, monkeypatch) -> None:
    """What `flask` commands and gunicorn rely on (and proof the fixture's file is read)."""
    monkeypatch.delenv("FLASK_SKIP_DOTENV")
    app = make_app()
    assert app.config["WEBHOOK_DATABASE_URL"] == ELSEWHERE
    assert app.config["WORKER_DATABASE_URL"] == ELSEWHERE

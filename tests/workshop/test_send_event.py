"""workshop.send_event against the real app behind a real HTTP server and real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import WEBHOOK_SECRET, audit, balance_of
from tests.support.servers import serve
from workshop import send_event


@pytest.fixture
def webhook_url(app) -> Iterator[str]:
    with serve(app) as url:
        yield url + "/api/webhook/stripe"


def test_sends_a_signed_event_that_grants(webhook_url, owner, make_user, capsys):
    user = make_user()
    code = send_event.main(
        [
            "checkout.session.completed",
            "--url", webhook_url,
            "--user-id", str(user),
            "--package", "tokens_250",
            "--payment-intent", "pi_send_event_grant",
            "--secret", WEBHOOK_SECRET,
        ]
    )  # fmt: skip
    assert code == 0
    assert "HTTP 200" in capsys.readouterr().out
    assert balance_of(owner, user) == 250
    assert audit(owner) == []


def test_follows_one_payment_through_a_refund(webhook_url, owner, make_user, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    user = make_user()
    common = ["--url", webhook_url, "--user-id", str(user), "--package", "tokens_100"]
    pi = ["--payment-intent", "pi_send_event_refund", "--charge", "ch_send_event_refund"]
    assert send_event.main(["payment_intent.succeeded", *common, *pi]) == 0
    assert balance_of(owner, user) == 100
    assert send_event.main(["charge.refunded", *common, *pi, "--refunded", "250"]) == 0
    assert balance_of(owner, user) == 50
    assert audit(owner) == []


def test_wrong_secret_is_refused_by_the_webhook(webhook_url, owner, make_user, capsys):
    user = make_user()
    code = send_event.main(
        ["checkout.session.completed", "--url", webhook_url, "--user-id", str(user),
         "--secret", "whsec_wrong"]
    )  # fmt: skip
    assert code == 1
    assert "HTTP 400" in capsys.readouterr().out
    assert balance_of(owner, user) == 0


def test_without_a_secret_it_refuses_to_send(monkeypatch, capsys):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "")
    code = send_event.main(["charge.succeeded", "--url", "http://127.0.0.1:9/x"])
    assert code == 2
    assert "no signing secret" in capsys.readouterr().err


def test_the_secret_comes_from_dotenv_without_loading_it(
    webhook_url, owner, make_user, tmp_path, monkeypatch
):
    """Outside the suite (no FLASK_SKIP_DOTENV) the secret may come from .env; the rest of
    .env (the dev database's URLs) never lands in os.environ, where a later app would read it."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"STRIPE_WEBHOOK_SECRET={WEBHOOK_SECRET}\nWEBHOOK_DATABASE_URL=postgresql://dev/elsewhere\n"
    )
    monkeypatch.setattr(send_event, "DOTENV", env_file)
    monkeypatch.delenv("FLASK_SKIP_DOTENV")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "")
    user = make_user()
    argv = ["checkout.session.completed", "--url", webhook_url, "--user-id", str(user)]
    assert send_event.main(argv) == 0
    assert balance_of(owner, user) == 100
    assert "WEBHOOK_DATABASE_URL" not in os.environ


@pytest.mark.parametrize("event_type", send_event.HANDLED_TYPES)
def test_dry_run_builds_every_handled_type(event_type, capsys):
    assert send_event.main([event_type, "--user-id", "u1", "--dry-run"]) == 0
    evt = json.loads(capsys.readouterr().out)
    assert evt["type"] == event_type
    assert evt["id"].startswith("evt_") and evt["data"]["object"]["id"]


def test_runs_as_a_module(webhook_url, owner, make_user):
    user = make_user()
    result = subprocess.run(
        [sys.executable, "-m", "workshop.send_event", "checkout.session.completed",
         "--url", webhook_url, "--user-id", str(user), "--package", "tokens_600",
         "--secret", WEBHOOK_SECRET],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"outcome":"processed"' in result.stdout.replace(" ", "")
    assert balance_of(owner, user) == 600

"""The operator commands are `flask --app webapp ...` commands (no `python -m scripts.X` left)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

OPERATOR_COMMANDS = {
    "migrate",
    "reconcile",
    "notify-alerts",
    "db-logins",
    "create-admin",
    "expire-agent-requests",
    "audit",
}


def test_every_operator_command_is_registered(app: Flask) -> None:
    assert set(app.cli.list_commands(None)) >= OPERATOR_COMMANDS  # type: ignore[arg-type]


def test_migrate_on_a_migrated_database_applies_nothing(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    assert "database is up to date" in result.output
    status = app.test_cli_runner().invoke(args=["migrate", "--status"])
    lines = status.output.splitlines()
    assert lines and all(line.startswith("applied ") for line in lines), status.output


def test_migrate_reports_a_changed_file_as_one_error(app: Flask, owner) -> None:
    row = owner.execute(
        "select version, checksum from public.tokenbill_migrations order by version limit 1"
    ).fetchone()
    owner.execute(
        "update public.tokenbill_migrations set checksum = 'x' where version = %s",
        [row["version"]],
    )
    try:
        result = app.test_cli_runner().invoke(args=["migrate"])
    finally:
        owner.execute(
            "update public.tokenbill_migrations set checksum = %s where version = %s",
            [row["checksum"], row["version"]],
        )
    assert result.exit_code == 1
    assert "migration error" in result.output and row["version"] in result.output


def test_notify_alerts_without_its_settings_is_a_usage_error(
    make_app: Callable[..., Flask], monkeypatch
) -> None:
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    result = make_app().test_cli_runner().invoke(args=["notify-alerts", "--once"])
    assert result.exit_code == 2
    assert "ALERT_WEBHOOK_URL" in result.output


def test_audit_command_reports_no_discrepancies(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["audit"])
    assert result.exit_code == 0, result.output
    assert "No discrepancies" in result.output

"""Operator commands: ``flask --app webapp <command>`` (``flask --app webapp --help`` lists them).

create-admin and expire-agent-requests are here; migrate, reconcile, notify-alerts, db-logins,
audit, auto-topup and workers (the background loops in one process) live in webapp/ops/ and
are registered below.

Making an admin is deliberately not something the web role can do (api.set_admin is not
granted to tokenbill_app), so these commands connect with the operator's own login:
MIGRATION_DATABASE_URL when set, else DATABASE_URL, and never ``SET ROLE``.
"""

from __future__ import annotations

import time

import click
from flask import Flask
from flask.cli import with_appcontext

from .auth import MIN_PASSWORD, hasher
from .ops import audit, auto_topup, db_logins, migrate, notify_alerts, reconcile, workers
from .ops.connection import operator_connection


@click.command("create-admin")
@click.argument("email")
@click.option("--password", help="Password for a new account (prompted when omitted).")
@with_appcontext
def create_admin(email: str, password: str | None) -> None:
    """Make EMAIL an admin, creating the account first if it does not exist."""
    email = email.strip().lower()
    with operator_connection() as conn:
        exists = conn.execute("select 1 from api.user_credentials(%s)", [email]).fetchone()
        if not exists:
            if password is None:
                password = click.prompt(
                    "Password for the new account", hide_input=True, confirmation_prompt=True
                )
            if len(password) < MIN_PASSWORD:
                raise click.BadParameter(
                    f"must be at least {MIN_PASSWORD} characters", param_hint="--password"
                )
            conn.execute("select api.register_user(%s, %s)", [email, hasher.hash(password)])
            click.echo(f"Created account {email}.")
        elif password is not None:
            click.echo("The account exists; its password was left unchanged.")
        user_id = conn.execute("select api.set_admin(%s) as id", [email]).fetchone()[0]  # type: ignore[index]
    click.echo(f"{email} is an admin (user id {user_id}).")


@click.command("expire-agent-requests")
@click.option("--once", is_flag=True, help="One sweep, then exit (the default: for cron).")
@click.option("--interval", type=float, help="Sweep every INTERVAL seconds until stopped.")
@with_appcontext
def expire_agent_requests(once: bool, interval: float | None) -> None:
    """Settle agent holds past their expiry by the written rule: charged when the dead worker
    had delivered output, released otherwise. One sweep by default (cron entries must not
    start a process that never ends); --interval loops, like `flask --app webapp workers`."""
    if once or interval is None:
        click.echo(f"Settled {_expire_holds()} expired agent request(s).")
        return
    while True:
        try:
            count = _expire_holds()
        except click.ClickException as exc:  # the database is down: say so, try again
            click.echo(f"expire-agent-requests: {exc.format_message()}", err=True)
        else:
            if count:
                click.echo(f"Settled {count} expired agent request(s).")
        time.sleep(interval)


def _expire_holds() -> int:
    with operator_connection() as conn:
        return conn.execute("select api.expire_agent_holds()").fetchone()[0]  # type: ignore[index]


def init_app(app: Flask) -> None:
    for command in (create_admin, expire_agent_requests):
        app.cli.add_command(command)
    for module in (migrate, reconcile, notify_alerts, db_logins, audit, auto_topup, workers):
        app.cli.add_command(module.command)

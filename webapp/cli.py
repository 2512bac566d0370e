"""Operator commands: ``flask --app webapp create-admin EMAIL`` and ``expire-agent-requests``.

Making an admin is deliberately not something the web role can do (api.set_admin is not
granted to tokenbill_app), so these commands connect with the operator's own login:
MIGRATION_DATABASE_URL when set, else DATABASE_URL, and never ``SET ROLE``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import click
import psycopg
from flask import Flask, current_app
from flask.cli import with_appcontext
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from .auth import MIN_PASSWORD, hasher
from .config import MISSING_DATABASE_URL


def operator_url() -> str:
    """The database URL with the owner's privileges."""
    return (
        current_app.config.get("MIGRATION_DATABASE_URL")
        or os.environ.get("MIGRATION_DATABASE_URL")
        or current_app.config["DATABASE_URL"]
    )


def _where(url: str) -> str:
    """host:port/dbname of a URL, for messages (never the password)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "DATABASE_URL (unparsable)"
    return (
        f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
    )


@contextmanager
def operator_connection() -> Iterator[psycopg.Connection]:
    """An autocommit connection as the operator; database trouble becomes one clear line."""
    url = operator_url()
    if not url:
        raise click.ClickException(MISSING_DATABASE_URL)
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = lines[0].removeprefix("connection failed: ")
        raise click.ClickException(
            f"cannot connect to the database at {_where(url)} ({reason}); is it running?"
            " `bash scripts/run` starts the embedded one"
        ) from None
    with conn:
        try:
            yield conn
        except (errors.InvalidSchemaName, errors.UndefinedFunction, errors.UndefinedTable):
            raise click.ClickException(
                f"the database at {_where(url)} has no tokenbill schema (or an old one):"
                " run `python -m scripts.migrate` with the same DATABASE_URL"
            ) from None
        except psycopg.Error as exc:
            message = exc.diag.message_primary or type(exc).__name__
            raise click.ClickException(f"database error at {_where(url)}: {message}") from None


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
@with_appcontext
def expire_agent_requests() -> None:
    """Settle agent holds past their expiry by the written rule (run from cron): charged when
    the dead worker had delivered output, released otherwise."""
    with operator_connection() as conn:
        count = conn.execute("select api.expire_agent_holds()").fetchone()[0]  # type: ignore[index]
    click.echo(f"Settled {count} expired agent request(s).")


def init_app(app: Flask) -> None:
    app.cli.add_command(create_admin)
    app.cli.add_command(expire_agent_requests)
    from .topup_worker import auto_topup

    app.cli.add_command(auto_topup)

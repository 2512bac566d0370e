"""The operator's own database connection, shared by every ``flask --app webapp`` command.

Operator commands connect with MIGRATION_DATABASE_URL when set, else DATABASE_URL, and never
``SET ROLE``: they do what the web role may not (make admins, migrate, audit).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import click
import psycopg
from flask import current_app
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from ..config import MISSING_DATABASE_URL


def operator_url() -> str:
    """The database URL with the owner's privileges."""
    return (
        current_app.config.get("MIGRATION_DATABASE_URL")
        or os.environ.get("MIGRATION_DATABASE_URL")
        or current_app.config["DATABASE_URL"]
    )


def worker_url(config: Mapping[str, Any]) -> str:
    """The database URL of the background loops (webapp/ops/workers.py, auto-topup,
    notify-alerts): WORKER_DATABASE_URL, the login that may only SET ROLE to the notifier and
    app roles, else DATABASE_URL. They SET ROLE themselves, never act as this login."""
    return config.get("WORKER_DATABASE_URL") or config.get("DATABASE_URL") or ""


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
                " run `flask --app webapp migrate` with the same DATABASE_URL"
            ) from None
        except psycopg.Error as exc:
            message = exc.diag.message_primary or type(exc).__name__
            raise click.ClickException(f"database error at {_where(url)}: {message}") from None

"""The connection pool, and the one way views talk to PostgreSQL.

Every connection runs ``SET ROLE`` to DATABASE_ROLE (``tokenbill_app``) so the app holds only
EXECUTE on api functions and SELECT on api views, whatever login the URL uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Flask, current_app
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .config import MISSING_DATABASE_URL, ConfigError

EXTENSION_KEY = "tokenbill_db"
APP_ROLE = "tokenbill_app"

Row = dict[str, Any]


def set_role(conn: psycopg.Connection[Any], role: str | None) -> None:
    """Act as ``role`` for the rest of this session (nothing when role is empty)."""
    if role:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))


def connect_as(url: str, role: str | None = APP_ROLE, **kwargs: Any) -> psycopg.Connection[Any]:
    """A single connection acting as ``role``, like the pool's: for scripts and tests."""
    conn = psycopg.connect(url, **kwargs)
    try:
        set_role(conn, role)
    except BaseException:
        conn.close()
        raise
    return conn


class Database:
    """A psycopg pool with small helpers returning dict rows."""

    def __init__(self, url: str, role: str | None, max_size: int = 10) -> None:
        self.url = url
        self.role = role or None
        self.pool = ConnectionPool(
            url,
            open=False,
            min_size=1,
            max_size=max_size,
            timeout=30,
            kwargs={"row_factory": dict_row},
            configure=self._configure,
            check=ConnectionPool.check_connection,
            name="tokenbill",
        )

    def _configure(self, conn: psycopg.Connection) -> None:
        set_role(conn, self.role)
        conn.commit()

    def open(self) -> None:
        if not self.url:
            # Only `flask` commands load the app without a URL; one that serves must not
            # quietly try libpq's defaults (a local socket, some other cluster).
            raise ConfigError(MISSING_DATABASE_URL)
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Row]]:
        """A pooled connection; commits on success, rolls back on error."""
        with self.pool.connection() as conn:
            yield conn  # type: ignore[misc]

    def fetch_one(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        with self.connection() as conn:
            return conn.execute(query, params).fetchone()  # type: ignore[arg-type]

    def fetch_all(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        with self.connection() as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def init_app(app: Flask) -> None:
    """Create the pool for this app; it opens on first use, so an operator command (which
    never uses it) does not start connecting, and start-up never blocks."""
    database = Database(
        app.config["DATABASE_URL"], app.config["DATABASE_ROLE"], app.config["DATABASE_POOL_MAX"]
    )
    app.extensions[EXTENSION_KEY] = database


def get_db() -> Database:
    database: Database = current_app.extensions[EXTENSION_KEY]
    database.open()  # idempotent (and locked) in psycopg_pool; connects in the background
    return database

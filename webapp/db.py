"""The connection pools, and the one way views talk to PostgreSQL.

Every connection runs ``SET ROLE`` to its pool's role, so a view holds only the functions that
role may execute, whatever login the URL uses (docs/security.md):

* ``get_db()`` — DATABASE_URL acting as ``tokenbill_app``; admin pages switch a transaction to
  ``tokenbill_admin`` with ``SET LOCAL ROLE`` (``admin_role()``) after checking the user.
* ``get_webhook_db()`` — WEBHOOK_DATABASE_URL acting as ``tokenbill_webhook``, the only role
  that applies Stripe objects (the webhook, the success page's fulfilment).
* ``get_auth_db()`` — AUTH_DATABASE_URL acting as ``tokenbill_auth``, the only role that reads
  password hashes (the login view, the change-password check): a leaked DATABASE_URL cannot.

Behind a transaction pooler (PgBouncer ``pool_mode = transaction``, DATABASE_TRANSACTION_POOLER)
a client connection's transactions land on any server connection, so session state cannot be
trusted: statements are never prepared server-side, and every transaction starts with
``SET LOCAL ROLE`` (the role then lives exactly as long as the server connection is ours).

Otherwise a single statement (``call``, ``fetch_one``, ``fetch_all``) runs in autocommit, one
round trip, on a connection handed out without a liveness ping while it is in steady use
(``_check``): an agent request's billing is two round trips, begin and settle
(docs/performance.md).
"""

from __future__ import annotations

import select
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import monotonic
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from flask import Flask, current_app, g, has_request_context
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .config import MISSING_DATABASE_URL, ConfigError

EXTENSION_KEY = "tokenbill_db"
WEBHOOK_EXTENSION_KEY = "tokenbill_webhook_db"
AUTH_EXTENSION_KEY = "tokenbill_auth_db"
APP_ROLE = "tokenbill_app"
WEBHOOK_ROLE = "tokenbill_webhook"
AUTH_ROLE = "tokenbill_auth"
ADMIN_ROLE = "tokenbill_admin"
# A pooled connection last handed out less than this long ago, on whose socket the server has
# sent nothing since, is handed out again without a ping (Database._check): the agent
# endpoint's begin and settle, a webhook's grant and a page's queries save a round trip each
# (docs/performance.md).
PING_AFTER_IDLE_SECONDS = 2.0
# A password check holds its connection for one lookup, never for the Argon2 verification, so
# a couple of connections serve every thread of a worker.
AUTH_POOL_MAX = 2

Row = dict[str, Any]
# The largest bigint: table ids (ledger, exchanges) are bigint, so a cursor past it is a
# client's mistake, to refuse before the database does.
MAX_ID = 2**63 - 1


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


def _has_input(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection's socket is readable (or closed, or in error): the server sent
    something nobody asked for, which on an idle connection means it is ending it."""
    try:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, psycopg.Error):
        return True


class Database:
    """A psycopg pool with small helpers returning dict rows."""

    def __init__(
        self,
        url: str,
        role: str | None,
        max_size: int = 10,
        name: str = "tokenbill",
        request_roles: bool = False,
        transaction_pooler: bool = False,
        ping_after_idle: float = PING_AFTER_IDLE_SECONDS,
    ) -> None:
        self.url = url
        # A connection handed out less than this many seconds ago, with nothing waiting on its
        # socket, is handed out again without a ping (0: ping on every checkout). See _check.
        self.ping_after_idle = ping_after_idle
        self._handed_out_at: WeakKeyDictionary[psycopg.Connection[Any], float] = WeakKeyDictionary()
        self.role = role or None
        self.request_roles = request_roles  # honour use_role(); only the web login may switch
        self.transaction_pooler = transaction_pooler
        kwargs: dict[str, Any] = {"row_factory": dict_row}
        if transaction_pooler:
            kwargs["prepare_threshold"] = None  # a prepared statement lives on one server conn
        self._opened = False
        self.pool = ConnectionPool(
            url,
            open=False,
            min_size=1,
            max_size=max_size,
            timeout=30,
            kwargs=kwargs,
            configure=self._configure,
            check=self._check,
            name=name,
        )

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """Ping a pooled connection before handing it out (the pool replaces a dead one), unless
        it was handed out less than ``ping_after_idle`` seconds ago and the server has sent
        nothing on it since. A server that ends a connection (a restart,
        ``pg_terminate_backend``, a killed backend, ``idle_session_timeout``) sends its FATAL
        message or closes the socket, which makes it readable: that connection is pinged and
        replaced as before, and a quiet one costs no round trip. What a socket cannot show (a
        host gone without a word) only the ping after ``ping_after_idle`` seconds finds; a
        connection lost so within that time fails its statement like any database trouble
        (503, and the client or Stripe retries).

        The time is taken here, at checkout, not by a pool ``reset`` callback: with one, psycopg
        returns every connection through a worker thread (a thread hand-off per statement,
        and a connection not yet back when the next checkout comes).
        """
        now = monotonic()
        last = self._handed_out_at.get(conn)
        self._handed_out_at[conn] = now
        if last is not None and now - last < self.ping_after_idle and not _has_input(conn):
            return
        ConnectionPool.check_connection(conn)

    def _configure(self, conn: psycopg.Connection) -> None:
        if not self.transaction_pooler:  # else set per transaction, in connection()
            set_role(conn, self.role)
        conn.commit()

    def open(self) -> None:
        """Open the pool (connecting in the background); every later call returns at once, so
        the views may call it per request without taking the pool's lock each time."""
        if self._opened:
            return
        if not self.url:
            # Only `flask` commands load the app without a URL; one that serves must not
            # quietly try libpq's defaults (a local socket, some other cluster).
            raise ConfigError(MISSING_DATABASE_URL)
        self.pool.open(wait=False)
        self._opened = True

    def close(self) -> None:
        self.pool.close()
        self._opened = False  # a closed pool cannot reopen: open() now raises, as psycopg does

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Row]]:
        """A pooled connection; commits on success, rolls back on error.

        Inside a request that chose a narrower role (``use_role``), the transaction runs as
        that role (``SET LOCAL``: it ends with the transaction, the pool's role comes back).
        Behind a transaction pooler every transaction sets the pool's role that way too.
        """
        with self.pool.connection(timeout=timeout) as conn:
            role = g.get("db_local_role") if self.request_roles and has_request_context() else None
            role = role or (self.role if self.transaction_pooler else None)
            if role:
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
            yield conn  # type: ignore[misc]

    @contextmanager
    def _statement(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Row]]:
        """A connection for ONE statement, which PostgreSQL runs atomically by itself: in
        autocommit, one round trip instead of three (BEGIN, the statement, COMMIT). When the
        transaction must start with ``SET LOCAL ROLE`` (a request that chose a narrower role,
        or behind a transaction pooler) it is connection()'s transaction instead."""
        local_role = self.request_roles and has_request_context() and g.get("db_local_role")
        if local_role or self.transaction_pooler:
            with self.connection(timeout=timeout) as conn:
                yield conn
            return
        with self.pool.connection(timeout=timeout) as conn:
            conn.autocommit = True
            try:
                yield conn  # type: ignore[misc]
            finally:
                if conn.info.transaction_status == TransactionStatus.IDLE:
                    conn.autocommit = False  # a broken connection is discarded by the pool

    def call(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any] = (),
        timeout: float | None = None,
    ) -> Row | None:
        """Run one statement as its own transaction and return its first row (a database
        function's call, a lookup): one round trip."""
        with self._statement(timeout) as conn:
            return conn.execute(query, params).fetchone()  # type: ignore[arg-type]

    def fetch_one(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        """The first row of one statement (see call)."""
        return self.call(query, params)

    def fetch_all(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """Every row of one statement, as its own transaction: one round trip."""
        with self._statement() as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def _duty_pool(config: Mapping[str, Any], duty: str, max_size: int) -> Database:
    """The pool of a duty with a login of its own (``<duty>_DATABASE_URL``, acting as
    ``<duty>_DATABASE_ROLE``); DATABASE_URL when unset, which config.check allows in
    development only."""
    return Database(
        config[f"{duty}_DATABASE_URL"] or config["DATABASE_URL"],
        config[f"{duty}_DATABASE_ROLE"],
        max_size,
        name=f"tokenbill-{duty.lower()}",
        transaction_pooler=config.get("DATABASE_TRANSACTION_POOLER", False),
    )


def init_app(app: Flask) -> None:
    """Create the pools for this app; they open on first use, so an operator command (which
    never uses them) does not start connecting, and start-up never blocks."""
    config = app.config
    pool_max = config["DATABASE_POOL_MAX"]
    app.extensions[EXTENSION_KEY] = Database(
        config["DATABASE_URL"],
        config["DATABASE_ROLE"],
        pool_max,
        request_roles=True,
        transaction_pooler=config.get("DATABASE_TRANSACTION_POOLER", False),
    )
    app.extensions[WEBHOOK_EXTENSION_KEY] = _duty_pool(config, "WEBHOOK", pool_max)
    app.extensions[AUTH_EXTENSION_KEY] = _duty_pool(config, "AUTH", min(pool_max, AUTH_POOL_MAX))


def close_app(app: Flask) -> None:
    """Close the app's pools (tests and scripts that build many apps)."""
    for key in (EXTENSION_KEY, WEBHOOK_EXTENSION_KEY, AUTH_EXTENSION_KEY):
        database = app.extensions.get(key)
        if database is not None:
            database.close()


def use_role(role: str) -> None:
    """Run this request's transactions on get_db() as ``role`` (the login must be a member)."""
    g.db_local_role = role


def _opened(key: str) -> Database:
    database: Database = current_app.extensions[key]
    database.open()  # first use connects in the background; then a no-op
    return database


def get_db() -> Database:
    return _opened(EXTENSION_KEY)


def get_webhook_db() -> Database:
    """The pool acting as tokenbill_webhook: the only one that may apply Stripe objects."""
    return _opened(WEBHOOK_EXTENSION_KEY)


def get_auth_db() -> Database:
    """The pool acting as tokenbill_auth: the only one that may read password hashes."""
    return _opened(AUTH_EXTENSION_KEY)

"""Database.call: a DB function call that is its own transaction costs one round trip.

The webhook's one call and the agent endpoint's begin and settle (and each delivery record)
are single statements that PostgreSQL runs atomically; wrapping them in BEGIN … COMMIT only
added two round trips per call, and a liveness ping before each checkout a third. What must
not change: the statement is still atomic and committed at once, a pool connection goes back
in its usual (transactional) mode, a request that acts as a narrower role still gets its
``SET LOCAL ROLE`` inside a transaction, and a connection the server ended (a restart, a killed
backend) is still found and replaced before a statement is sent on it.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from flask import Flask

from tests.support.pg_wire import PING, round_trips
from webapp.db import (
    ADMIN_ROLE,
    PING_AFTER_IDLE_SECONDS,
    Database,
    get_auth_db,
    get_db,
    get_webhook_db,
    use_role,
)

POOLS = pytest.mark.parametrize(
    "pool", [get_db, get_webhook_db, get_auth_db], ids=["app", "webhook", "auth"]
)

ALONE = "select now() = statement_timestamp() as alone, current_user::text as who"


def test_call_commits_its_statement_and_gives_the_connection_back_transactional(make_app, owner):
    app = make_app()
    with app.app_context():
        db = get_webhook_db()
        assert db.call("select current_user::text as who") == {"who": "tokenbill_webhook"}
        with pytest.raises(psycopg.errors.DivisionByZero):
            db.call("select 1 / 0")
        # committed at once: another session sees it before this one does anything else
        row = db.call("select txid_current() as xid")
        assert owner.execute("select txid_status(%s) as status", [row["xid"]]).fetchone() == {
            "status": "committed"
        }
        with db.connection() as conn:
            assert conn.autocommit is False


def test_the_auth_pool_acts_as_tokenbill_auth_and_stays_small(make_app):
    """Password checks get their own role (0031); a login holds a connection for one lookup,
    never for the Argon2 verification, so a few connections serve every worker thread."""
    app = make_app(DATABASE_POOL_MAX=10)
    with app.app_context():
        db = get_auth_db()
        assert db.call("select current_user::text as who") == {"who": "tokenbill_auth"}
        assert db.pool.max_size < get_db().pool.max_size


def _kill_backend(owner, pid: int) -> None:
    owner.execute("select pg_terminate_backend(%s)", [pid])
    for _ in range(200):
        if not owner.execute("select 1 from pg_stat_activity where pid = %s", [pid]).fetchone():
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} still alive")


@POOLS
def test_a_killed_backend_is_found_before_the_next_statement_and_replaced(make_app, owner, pool):
    """A connection in steady use is handed out without a ping, yet one whose backend was
    killed (an operator's pg_terminate_backend, a server restart) is not used: the server's
    goodbye left its socket readable, so the pool pings it, drops it and gives a new one."""
    app = make_app(DATABASE_POOL_MAX=1)  # one connection: the next call gets the dead one
    with app.app_context():
        db = pool()
        assert db.ping_after_idle == PING_AFTER_IDLE_SECONDS > 0
        db.ping_after_idle = 3600.0  # however slowly this machine kills the backend
        pid = db.call("select pg_backend_pid() as pid")["pid"]
        _kill_backend(owner, pid)
        assert db.call("select pg_backend_pid() as pid")["pid"] != pid


@POOLS
def test_a_quiet_connection_in_steady_use_costs_no_ping(make_app, pool):
    app = make_app(DATABASE_POOL_MAX=1)
    with app.app_context():
        db = pool()
        db.call("select 1 as one")
        with round_trips(db) as sent:
            db.call("select 1 as one")
            db.fetch_one("select 2 as two")
            db.fetch_all("select 3 as three")
            with db.connection() as conn:  # a transaction of several statements
                conn.execute("select 4 as four")
        assert sent == [
            "select 1 as one",
            "select 2 as two",
            "select 3 as three",
            "BEGIN",
            "select 4 as four",
            "COMMIT",
        ]


def test_a_webhook_call_gives_its_connection_back_before_it_returns(make_app):
    """The time a connection went back is noted on the caller's thread: a pool reset callback
    would send every returned connection through the pool's worker thread (a thread switch
    per call, and a pool that grows when the next call comes before the worker ran)."""
    app = make_app(DATABASE_POOL_MAX=1)
    with app.app_context():
        db = get_webhook_db()
        db.pool.wait()
        for _ in range(50):
            assert db.call("select 1 as one") == {"one": 1}
            assert db.pool.get_stats().get("pool_available") == 1


def test_a_connection_not_handed_out_for_ping_after_idle_seconds_is_pinged(make_app):
    app = make_app(DATABASE_POOL_MAX=1)
    with app.app_context():
        db = get_db()
        db.ping_after_idle = 0.05
        with round_trips(db) as sent:
            time.sleep(0.1)  # idle longer than ping_after_idle
            db.call("select 1 as one")
            db.call("select 1 as one")
        assert sent == [PING, "select 1 as one", "select 1 as one"]


@POOLS
def test_a_connection_is_back_in_the_pool_when_its_call_returns(make_app, pool):
    """Given back by the calling thread itself: a pool ``reset`` callback would route every
    return through the pool's worker thread (a hand-off per statement, and a connection
    not yet back when the same request's next statement wants it)."""
    app = make_app(DATABASE_POOL_MAX=1)
    with app.app_context():
        db = pool()
        for _ in range(20):
            db.call("select 1 as one")
            assert db.pool.get_stats()["pool_available"] == 1


def test_a_call_is_one_statement_without_a_transaction_around_it(database_url: str) -> None:
    db = Database(database_url, "tokenbill_app")
    db.open()
    try:
        # a transaction's now() is its start: equal to the statement's only when nothing
        # (no separate BEGIN) came first
        assert db.call(ALONE) == {"alone": True, "who": "tokenbill_app"}
        assert db.fetch_one(ALONE) == {"alone": True, "who": "tokenbill_app"}
        assert db.fetch_all(ALONE) == [{"alone": True, "who": "tokenbill_app"}]
        with db.connection() as conn:
            assert conn.execute(ALONE).fetchone() == {"alone": False, "who": "tokenbill_app"}
            assert conn.autocommit is False  # the pool's connections stay transactional
    finally:
        db.close()


def test_a_failed_statement_commits_nothing_and_leaves_the_connection_usable(
    database_url: str, owner
) -> None:
    """One statement is still atomic: a function that writes and then fails leaves nothing."""
    db = Database(database_url, None, max_size=1)  # the owner's login: it may create tables
    db.open()
    table = f"scratch_{uuid.uuid4().hex[:8]}"
    owner.execute(f"create table {table} (n int check (n < 2))")
    try:
        with pytest.raises(psycopg.errors.CheckViolation):
            db.fetch_all(f"insert into {table} values (1), (2) returning n")
        assert owner.execute(f"select count(*) as n from {table}").fetchone() == {"n": 0}
        assert db.fetch_all(f"insert into {table} values (1) returning n") == [{"n": 1}]
        assert owner.execute(f"select count(*) as n from {table}").fetchone() == {"n": 1}
        with db.connection() as conn:
            assert conn.autocommit is False
    finally:
        owner.execute(f"drop table {table}")
        db.close()


def test_a_call_in_a_request_with_a_narrower_role_runs_in_its_transaction(app: Flask) -> None:
    with app.test_request_context("/"):
        use_role(ADMIN_ROLE)
        assert get_db().call(ALONE) == {"alone": False, "who": ADMIN_ROLE}
        assert get_db().fetch_all(ALONE) == [{"alone": False, "who": ADMIN_ROLE}]

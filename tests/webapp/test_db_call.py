"""Database.call: a DB function call that is its own transaction costs one round trip.

The webhook's one call and the agent endpoint's begin and settle (and each delivery record)
are single statements that PostgreSQL runs atomically; wrapping them in BEGIN … COMMIT only
added two round trips per call. What must not change: the statement is still atomic and
committed at once, a pool connection goes back in its usual (transactional) mode, a request
that acts as a narrower role still gets its ``SET LOCAL ROLE`` inside a transaction, and a
connection that died in steady use costs one failed call, never a wrong answer.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from flask import Flask

from webapp.db import (
    ADMIN_ROLE,
    WEBHOOK_PING_AFTER_IDLE_SECONDS,
    Database,
    get_db,
    get_webhook_db,
    use_role,
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


def _kill_backend(owner, pid: int) -> None:
    owner.execute("select pg_terminate_backend(%s)", [pid])
    for _ in range(200):
        if not owner.execute("select 1 from pg_stat_activity where pid = %s", [pid]).fetchone():
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} still alive")


def test_a_connection_that_died_in_steady_use_fails_one_call_then_the_pool_recovers(
    make_app, owner
):
    """The webhook pool skips the ping for a connection back less than
    WEBHOOK_PING_AFTER_IDLE_SECONDS ago: a server restart then fails one statement (the
    webhook's 5xx, retried by Stripe), never more, and never a wrong answer."""
    app = make_app(DATABASE_POOL_MAX=1)  # one connection: the next call gets the dead one
    with app.app_context():
        db = get_webhook_db()
        assert db.ping_after_idle == WEBHOOK_PING_AFTER_IDLE_SECONDS > 0
        db.ping_after_idle = 3600.0  # however slowly this machine kills the backend
        _kill_backend(owner, db.call("select pg_backend_pid() as pid")["pid"])
        with pytest.raises(psycopg.OperationalError):
            db.call("select 1 as one")
        assert db.call("select 1 as one") == {"one": 1}


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


def test_the_app_pool_pings_every_checkout(make_app, owner):
    app = make_app(DATABASE_POOL_MAX=1)
    with app.app_context():
        db = get_db()
        assert db.ping_after_idle == 0
        with db.connection() as conn:
            pid = conn.execute("select pg_backend_pid() as pid").fetchone()["pid"]
        _kill_backend(owner, pid)
        assert db.fetch_one("select 1 as one") == {"one": 1}  # the dead one was replaced


def test_a_call_is_one_statement_without_a_transaction_around_it(database_url: str) -> None:
    db = Database(database_url, "tokenbill_app")
    db.open()
    try:
        # a transaction's now() is its start: equal to the statement's only when nothing
        # (no separate BEGIN) came first
        assert db.call(ALONE) == {"alone": True, "who": "tokenbill_app"}
        assert db.fetch_one(ALONE) == {"alone": False, "who": "tokenbill_app"}
        with db.connection() as conn:
            assert conn.autocommit is False  # the pool's connections stay transactional
    finally:
        db.close()


def test_a_call_in_a_request_with_a_narrower_role_runs_in_its_transaction(app: Flask) -> None:
    with app.test_request_context("/"):
        use_role(ADMIN_ROLE)
        assert get_db().call(ALONE) == {"alone": False, "who": ADMIN_ROLE}

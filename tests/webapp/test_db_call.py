"""Database.call: one statement in autocommit (the webhook's one round trip), leaving the pooled
connection as every other caller expects it (in transaction mode)."""

from __future__ import annotations

import time

import psycopg
import pytest

from webapp.db import WEBHOOK_PING_AFTER_IDLE_SECONDS, get_db, get_webhook_db


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


def test_the_app_pool_pings_every_checkout(make_app, owner):
    app = make_app(DATABASE_POOL_MAX=1)
    with app.app_context():
        db = get_db()
        assert db.ping_after_idle == 0
        with db.connection() as conn:
            pid = conn.execute("select pg_backend_pid() as pid").fetchone()["pid"]
        _kill_backend(owner, pid)
        assert db.fetch_one("select 1 as one") == {"one": 1}  # the dead one was replaced

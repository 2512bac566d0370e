"""Database.call: one statement in autocommit (the webhook's one round trip), leaving the pooled
connection as every other caller expects it (in transaction mode)."""

from __future__ import annotations

import psycopg
import pytest

from webapp.db import get_webhook_db


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

"""Database.call: a DB function call that is its own transaction costs one round trip.

The agent endpoint's begin and settle (and each delivery record) are single statements that
PostgreSQL runs atomically; wrapping them in BEGIN … COMMIT only added two round trips per
call. What must not change: the statement is still atomic, a pool connection goes back in its
usual (transactional) mode, and a request that acts as a narrower role still gets its
``SET LOCAL ROLE`` inside a transaction.
"""

from __future__ import annotations

from flask import Flask

from webapp.db import ADMIN_ROLE, Database, use_role

ALONE = "select now() = statement_timestamp() as alone, current_user::text as who"


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
        from webapp.db import get_db

        use_role(ADMIN_ROLE)
        assert get_db().call(ALONE) == {"alone": False, "who": ADMIN_ROLE}

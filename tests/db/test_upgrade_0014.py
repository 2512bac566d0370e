"""Upgrading a live database to 0014: requests pending under 0007's charge-then-refund path
have no hold, so they are released and closed, not left pending (and charged) forever."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from tests.conftest import audit
from tests.support.upgrade import funded_user, migrate_before
from webapp.ops import migrate


def test_pending_0007_requests_are_released_by_the_upgrade(empty_db, tmp_path: Path):
    migrate_before(empty_db, tmp_path, "0014")
    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as conn:
        user = funded_user(conn, 3)
        for request_id in ("running", "finished"):  # 0007's signature: charged at once
            conn.execute(
                "select api.begin_agent_request(%s, %s, null, 'hi', 1)", [user, request_id]
            )
        conn.execute("select api.finish_agent_request(%s, 'finished', 'an answer')", [user])

    migrate.upgrade(empty_db)

    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(
            "select request_id, status from api.messages where role = 'assistant'"
            " order by request_id"
        ).fetchall()
        assert [(r["request_id"], r["status"]) for r in rows] == [
            ("finished", "done"),
            ("running", "timeout"),
        ]
        balance = conn.execute("select balance from api.accounts where id = %s", [user]).fetchone()
        assert balance["balance"] == 2  # the finished request stays paid, the other came back
        assert audit(conn) == []
        # and the replay of the released one tells the client so, for free
        replay = conn.execute(
            "select * from api.begin_agent_request(%s, 'running', null, 'hi', 'offline', 'h', 60)",
            [user],
        ).fetchone()
        assert (replay["outcome"], replay["status"]) == ("replayed", "timeout")

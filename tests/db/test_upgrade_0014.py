"""Upgrading a live database to 0014: requests pending under 0007's charge-then-refund path
have no hold, so they are released and closed, not left pending (and charged) forever."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.conftest import audit
from webapp.ops import migrate


@pytest.fixture
def empty_db(admin_url: str) -> Iterator[str]:
    name = f"tokenbill_up_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    yield make_conninfo(admin_url, dbname=name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"drop database {name} with (force)")


def test_pending_0007_requests_are_released_by_the_upgrade(empty_db, tmp_path: Path):
    before = tmp_path / "before"
    before.mkdir()
    for path in migrate.MIGRATIONS_DIR.glob("*.sql"):
        if path.name < "0014":
            shutil.copy(path, before)
    migrate.upgrade(empty_db, before)
    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as conn:
        admin = conn.execute("select api.register_user('a@example.test', 'x') as id").fetchone()
        conn.execute("select api.set_admin('a@example.test')")
        user = conn.execute("select api.register_user('u@example.test', 'x') as id").fetchone()
        conn.execute("select api.admin_adjust(%s, %s, 3, 'setup')", [admin["id"], user["id"]])
        for request_id in ("running", "finished"):  # 0007's signature: charged at once
            conn.execute(
                "select api.begin_agent_request(%s, %s, null, 'hi', 1)", [user["id"], request_id]
            )
        conn.execute("select api.finish_agent_request(%s, 'finished', 'an answer')", [user["id"]])

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
        balance = conn.execute(
            "select balance from api.accounts where id = %s", [user["id"]]
        ).fetchone()
        assert balance["balance"] == 2  # the finished request stays paid, the other came back
        assert audit(conn) == []
        # and the replay of the released one tells the client so, for free
        replay = conn.execute(
            "select * from api.begin_agent_request(%s, 'running', null, 'hi', 'offline', 'h', 60)",
            [user["id"]],
        ).fetchone()
        assert (replay["outcome"], replay["status"]) == ("replayed", "timeout")

"""Only a reservation commits without waiting for its WAL flush (0037).

The argument (db/migrations/0037_reservation_commit_without_flush.sql): a crash can lose a
reservation only if no synchronous commit followed it, and none of the answer reaches the
client before one does (tests/webapp/test_agent_wire.py checks that order). So the setting
must be confined to the transaction that reserved: every other writer, and the connection's
next transaction, commit synchronously."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg

from tests.support.agents import begin_request, make_overdue, settle_request


def _setting(conn: psycopg.Connection) -> str:
    return conn.execute("select current_setting('synchronous_commit') as s").fetchone()["s"]


def _in_one_transaction(conn: psycopg.Connection, call: Callable[[], object]) -> str:
    """synchronous_commit as the transaction running ``call`` would commit with."""
    with conn.transaction():
        call()
        return _setting(conn)


def test_a_reservation_commits_without_waiting_and_only_its_own_transaction(
    app_conn: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    user = make_user(balance=10)
    assert _in_one_transaction(app_conn, lambda: begin_request(app_conn, user, "r1")) == "off"
    assert _setting(app_conn) == "on"  # the pooled connection's next transaction


def test_a_begin_that_reserves_nothing_commits_synchronously(
    owner: psycopg.Connection, app_conn: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    poor, rich = make_user(balance=0), make_user(balance=10)
    assert begin_request(app_conn, poor, "short")["outcome"] == "insufficient_tokens"
    assert _in_one_transaction(app_conn, lambda: begin_request(app_conn, poor, "short")) == "on"

    begin_request(app_conn, rich, "twice")
    settle_request(app_conn, rich, "twice")
    replay = begin_request(app_conn, rich, "twice")
    assert replay["outcome"] == "replayed"
    assert _in_one_transaction(app_conn, lambda: begin_request(app_conn, rich, "twice")) == "on"

    # a dead worker's hold (it had delivered, so it is charged) closed on the way to a
    # refusal: money moved, and durably
    dying = make_user(balance=1)  # one reservation's worth (the '*' price: 1)
    begin_request(app_conn, dying, "dead")
    app_conn.execute("select api.record_agent_delivery(%s, 'dead', 1, 5, 10)", [dying])
    make_overdue(owner, dying, "dead")

    def refused_after_closing() -> None:
        assert begin_request(app_conn, dying, "after")["outcome"] == "insufficient_tokens"

    assert _in_one_transaction(app_conn, refused_after_closing) == "on"
    dead = owner.execute(
        "select hold_status from tokenbill.exchanges where user_id = %s and request_id = 'dead'",
        [dying],
    ).fetchone()
    assert dead["hold_status"] == "settled"


def test_what_precedes_an_answer_commits_synchronously(
    app_conn: psycopg.Connection, owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    """The delivery record and the settle are the commits that make a reservation durable
    before any of its answer is handed over; consume's commit is its own charge."""
    user = make_user(balance=10)
    begin_request(app_conn, user, "r1")
    begin_request(app_conn, user, "r2")

    def record() -> None:
        app_conn.execute("select api.record_agent_delivery(%s, 'r1', 1, 5, 10)", [user]).fetchone()

    assert _in_one_transaction(app_conn, record) == "on"
    assert _in_one_transaction(app_conn, lambda: settle_request(app_conn, user, "r1")) == "on"
    assert _in_one_transaction(app_conn, lambda: settle_request(app_conn, user, "r2")) == "on"
    assert (
        _in_one_transaction(
            owner, lambda: owner.execute("select * from api.consume(%s, 'c1', 1)", [user])
        )
        == "on"
    )

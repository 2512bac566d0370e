"""0007: agent requests charge and record atomically, replay the first outcome, refund failures."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import audit, balance_of, connect_as_app


def begin(conn, user, request_id, message="hello", conversation=None, cost=1):
    return conn.execute(
        "select * from api.begin_agent_request(%s, %s, %s, %s, %s)",
        [user, request_id, conversation, message, cost],
    ).fetchone()


def kinds(conn, user) -> list[str]:
    rows = conn.execute(
        "select kind from api.ledger_entries where user_id = %s order by id", [user]
    ).fetchall()
    return [r["kind"] for r in rows]


def test_begin_charges_and_stores_both_messages(app_conn, make_user):
    user = make_user(balance=3)
    row = begin(app_conn, user, "r1", "  What   is\n tokenbill? ")
    assert (row["outcome"], row["balance"], row["status"]) == ("started", 2, "pending")
    conv = app_conn.execute(
        "select * from api.conversations where id = %s", [row["conversation_id"]]
    ).fetchone()
    assert conv["user_id"] == user and conv["title"] == "What is tokenbill?"
    messages = app_conn.execute(
        "select role, status, request_id from api.messages where conversation_id = %s order by id",
        [row["conversation_id"]],
    ).fetchall()
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "done"),
        ("assistant", "pending"),
    ]
    assert kinds(app_conn, user) == ["admin_adjustment", "consumption"]


def test_finish_then_replay_returns_the_first_reply_without_charging(app_conn, make_user):
    user = make_user(balance=3)
    first = begin(app_conn, user, "r1")
    done = app_conn.execute(
        "select * from api.finish_agent_request(%s, 'r1', 'the answer')", [user]
    ).fetchone()
    assert done["balance"] == 2 and done["conversation_id"] == first["conversation_id"]
    again = begin(app_conn, user, "r1", "a different text")
    assert (again["outcome"], again["status"], again["reply"]) == ("replayed", "done", "the answer")
    assert again["conversation_id"] == first["conversation_id"]
    assert balance_of(app_conn, user) == 2
    assert kinds(app_conn, user).count("consumption") == 1


def test_replay_while_pending_reports_pending(app_conn, make_user):
    user = make_user(balance=3)
    begin(app_conn, user, "r1")
    again = begin(app_conn, user, "r1")
    assert (again["outcome"], again["status"]) == ("replayed", "pending")
    assert balance_of(app_conn, user) == 2


def test_fail_releases_once_and_replay_reports_the_failure(app_conn, owner, make_user):
    user = make_user(balance=1)
    begin(app_conn, user, "r1")
    assert balance_of(app_conn, user) == 0
    failed = app_conn.execute(
        "select * from api.fail_agent_request(%s, 'r1', 'boom', true)", [user]
    ).fetchone()
    assert (failed["status"], failed["balance"]) == ("released", 1)
    twice = app_conn.execute(
        "select * from api.fail_agent_request(%s, 'r1', 'boom')", [user]
    ).fetchone()
    assert twice["status"] == "already_released" and twice["balance"] == 1
    replay = begin(app_conn, user, "r1")
    assert (replay["outcome"], replay["status"], replay["error"]) == ("replayed", "timeout", "boom")
    assert kinds(app_conn, user) == ["admin_adjustment", "consumption", "consumption_refund"]
    with pytest.raises(psycopg.Error) as exc:
        app_conn.execute("select * from api.finish_agent_request(%s, 'r1', 'late')", [user])
    assert exc.value.sqlstate == "TB004"
    assert audit(owner) == []


def test_fail_after_done_changes_nothing(app_conn, make_user):
    user = make_user(balance=1)
    begin(app_conn, user, "r1")
    app_conn.execute("select api.finish_agent_request(%s, 'r1', 'ok')", [user])
    row = app_conn.execute("select * from api.fail_agent_request(%s, 'r1', 'x')", [user]).fetchone()
    assert (row["status"], row["balance"]) == ("not_pending", 0)
    assert "consumption_refund" not in kinds(app_conn, user)


def test_insufficient_tokens_charges_and_stores_nothing(app_conn, make_user):
    user = make_user(balance=0)
    row = begin(app_conn, user, "r1")
    assert (row["outcome"], row["balance"]) == ("insufficient_tokens", 0)
    count = app_conn.execute(
        "select count(*) as n from api.messages where user_id = %s", [user]
    ).fetchone()
    assert count["n"] == 0 and kinds(app_conn, user) == []


def test_someone_elses_conversation_is_not_found(app_conn, make_user):
    alice, bob = make_user(balance=2), make_user(balance=2)
    conv = begin(app_conn, alice, "r1")["conversation_id"]
    with pytest.raises(psycopg.Error) as exc:
        begin(app_conn, bob, "r1", conversation=conv)
    assert exc.value.sqlstate == "TB002"
    assert balance_of(app_conn, bob) == 2
    again = begin(app_conn, alice, "r2", conversation=conv)
    assert again["outcome"] == "started" and again["conversation_id"] == conv


@pytest.mark.parametrize("message", ["", "   ", "x" * 20001])
def test_bad_messages_raise_tb003(app_conn, make_user, message):
    user = make_user(balance=1)
    with pytest.raises(psycopg.Error) as exc:
        begin(app_conn, user, "r1", message)
    assert exc.value.sqlstate == "TB003"
    assert balance_of(app_conn, user) == 1


def test_request_id_charged_outside_chat_is_a_conflict(app_conn, owner, make_user):
    user = make_user(balance=2)
    owner.execute("select api.consume(%s, 'r1')", [user])
    with pytest.raises(psycopg.Error) as exc:
        begin(app_conn, user, "r1")
    assert exc.value.sqlstate == "TB004"


def test_same_request_from_10_threads_starts_once(database_url, owner, make_user):
    user = make_user(balance=5)
    barrier = threading.Barrier(10)

    def call(_: int) -> str:
        with connect_as_app(database_url) as conn:
            barrier.wait()
            return begin(conn, user, "same")["outcome"]

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(call, range(10)))
    assert sorted(outcomes) == ["replayed"] * 9 + ["started"]
    assert balance_of(owner, user) == 4


def test_expire_fails_and_refunds_stale_pending_requests(owner, app_conn, make_user):
    user = make_user(balance=2)
    begin(app_conn, user, "old")
    begin(app_conn, user, "new")
    # the owner may backdate a row (messages are not append-only like the ledger)
    owner.execute(
        "update tokenbill.messages set created_at = now() - interval '1 hour'"
        " where user_id = %s and request_id = 'old'",
        [user],
    )
    expired = app_conn.execute(
        "select api.expire_agent_requests(interval '10 minutes') as n"
    ).fetchone()
    assert expired["n"] == 1
    statuses = dict(
        (r["request_id"], r["status"])
        for r in app_conn.execute(
            "select request_id, status from api.messages where user_id = %s and role = 'assistant'",
            [user],
        ).fetchall()
    )
    assert statuses == {"old": "timeout", "new": "pending"}
    assert balance_of(app_conn, user) == 1


@pytest.mark.parametrize(
    "statement",
    [
        "insert into tokenbill.messages (conversation_id, user_id, request_id, role, status, cost)"
        " values (gen_random_uuid(), gen_random_uuid(), 'x', 'user', 'done', 1)",
        "update tokenbill.messages set content = 'x'",
        "select * from tokenbill.conversations",
        "insert into api.conversations (user_id, title) values (gen_random_uuid(), 'x')",
    ],
)
def test_app_role_cannot_write_chat_tables(app_conn, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute(statement)


def test_functions_are_not_executable_by_public(owner):
    rows = owner.execute(
        """
        select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'api'
           and p.proname in ('begin_agent_request', 'finish_agent_request',
                             'fail_agent_request', 'expire_agent_requests')
           and has_function_privilege('public', p.oid, 'execute')
        """
    ).fetchall()
    assert rows == []

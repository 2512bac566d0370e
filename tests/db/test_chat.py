"""0007 + 0014: agent requests reserve and record atomically, replay the first outcome, and are
settled by what was delivered — once, whichever of settle and expiry comes first."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.conftest import audit, balance_of, connect_as_app
from tests.support.agents import begin_request as begin
from tests.support.agents import make_overdue, open_holds
from tests.support.agents import settle_request as settle
from webapp.ops import migrate


def kinds(conn, user) -> list[str]:
    rows = conn.execute(
        "select kind from api.ledger_entries where user_id = %s order by id", [user]
    ).fetchall()
    return [r["kind"] for r in rows]


def deliver(conn, user, request_id, parts=1, chars=5) -> bool:
    return conn.execute(
        "select api.record_agent_delivery(%s, %s, %s, %s, 10) as held",
        [user, request_id, parts, chars],
    ).fetchone()["held"]


def expire(conn) -> int:
    return conn.execute("select api.expire_agent_holds() as n").fetchone()["n"]


def assistant(conn, user, request_id):
    return conn.execute(
        "select status, content, error, charged from api.messages"
        " where user_id = %s and request_id = %s and role = 'assistant'",
        [user, request_id],
    ).fetchone()


def test_begin_reserves_and_stores_both_messages(owner, app_conn, make_user):
    user = make_user(balance=3)
    row = begin(app_conn, user, "r1", "  What   is\n tokenbill? ")
    assert (row["outcome"], row["balance"], row["status"], row["price"]) == (
        "started",
        2,
        "pending",
        1,
    )
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
    assert kinds(app_conn, user) == ["admin_adjustment", "reserve"]
    assert open_holds(app_conn, user) == 1
    assert audit(owner) == []


def test_settle_done_charges_and_replay_is_free(owner, app_conn, make_user):
    user = make_user(balance=3)
    first = begin(app_conn, user, "r1")
    done = settle(app_conn, user, "r1")
    assert (done["status"], done["message_status"], done["charged"], done["balance"]) == (
        "settled",
        "done",
        1,
        2,
    )
    again = begin(app_conn, user, "r1")
    assert (again["outcome"], again["status"], again["reply"]) == ("replayed", "done", "the answer")
    assert again["conversation_id"] == first["conversation_id"] and again["charged"] == 1
    assert balance_of(app_conn, user) == 2
    assert kinds(app_conn, user) == ["admin_adjustment", "reserve"]
    rows = app_conn.execute(
        "select kind, delta, reason from api.ledger_entries"
        " where user_id = %s and request_id = 'r1' order by id",
        [user],
    ).fetchall()
    # what a DBA reads: the reservation, all of it charged (0021: no 0-delta settle row; the
    # hold says how it ended)
    assert [(r["kind"], r["delta"]) for r in rows] == [("reserve", -1)]
    hold = app_conn.execute(
        "select status, charged, outcome from api.agent_holds where user_id = %s", [user]
    ).fetchone()
    assert (hold["status"], hold["charged"], hold["outcome"]) == ("settled", 1, "done")
    assert audit(owner) == []


def test_the_same_key_with_another_body_is_a_mismatch_and_free(app_conn, make_user):
    user = make_user(balance=3)
    begin(app_conn, user, "r1", "question one")
    settle(app_conn, user, "r1")
    other = begin(app_conn, user, "r1", "question two")
    assert (other["outcome"], other["reply"], other["balance"]) == ("mismatch", None, 2)
    assert kinds(app_conn, user) == ["admin_adjustment", "reserve"]


def test_replay_while_pending_reports_pending(app_conn, make_user):
    user = make_user(balance=3)
    begin(app_conn, user, "r1")
    again = begin(app_conn, user, "r1")
    assert (again["outcome"], again["status"]) == ("replayed", "pending")
    assert balance_of(app_conn, user) == 2


def test_failure_before_any_delivery_releases_once(owner, app_conn, make_user):
    user = make_user(balance=1)
    begin(app_conn, user, "r1")
    assert balance_of(app_conn, user) == 0
    failed = settle(app_conn, user, "r1", "timeout", reply="")
    assert (failed["message_status"], failed["charged"], failed["balance"]) == ("timeout", 0, 1)
    twice = settle(app_conn, user, "r1", "failed", reply="")
    assert (twice["status"], twice["balance"]) == ("already_settled", 1)
    replay = begin(app_conn, user, "r1")
    assert (replay["outcome"], replay["status"], replay["error"]) == ("replayed", "timeout", "boom")
    assert kinds(app_conn, user) == ["admin_adjustment", "reserve", "release"]
    assert audit(owner) == []


@pytest.mark.parametrize("outcome", ["failed", "timeout", "disconnected"])
def test_anything_delivered_is_charged_and_partial(app_conn, make_user, outcome):
    user = make_user(balance=1)
    begin(app_conn, user, "r1")
    assert deliver(app_conn, user, "r1", parts=2, chars=12)
    row = settle(app_conn, user, "r1", outcome, reply="twelve chars")
    assert (row["message_status"], row["charged"], row["balance"]) == ("partial", 1, 0)
    assert assistant(app_conn, user, "r1")["content"] == "twelve chars"


def test_a_recorded_delivery_charges_even_if_the_reply_is_lost(app_conn, make_user):
    """The worker recorded the first part, then could not say what it was: still charged."""
    user = make_user(balance=1)
    begin(app_conn, user, "r1")
    deliver(app_conn, user, "r1")
    row = settle(app_conn, user, "r1", "disconnected", reply="")
    assert (row["message_status"], row["charged"]) == ("partial", 1)


# -- the finish/expire race: a status guard makes the first settlement the only one ---------
def test_expire_first_then_a_late_settle_changes_nothing(owner, app_conn, make_user):
    user = make_user(balance=2)
    begin(app_conn, user, "r1")
    deliver(app_conn, user, "r1", parts=3, chars=30)
    make_overdue(owner, user)
    assert expire(app_conn) == 1
    assert assistant(app_conn, user, "r1")["status"] == "partial"
    late = settle(app_conn, user, "r1", "done", reply="the whole answer")
    assert (late["status"], late["message_status"], late["charged"]) == (
        "already_settled",
        "partial",
        1,
    )
    assert balance_of(app_conn, user) == 1
    assert kinds(app_conn, user) == ["admin_adjustment", "reserve"]
    assert deliver(app_conn, user, "r1", parts=4) is False  # the stream is told to stop
    assert audit(owner) == []


def test_a_hold_whose_time_is_up_records_no_more_delivery(owner, app_conn, make_user):
    user = make_user(balance=1)
    begin(app_conn, user, "r1")
    make_overdue(owner, user)
    assert deliver(app_conn, user, "r1") is False  # the stream stops instead of running on
    row = settle(app_conn, user, "r1", "timeout", reply="")
    assert (row["status"], row["message_status"], row["charged"]) == ("settled", "timeout", 0)


def test_settle_first_then_expire_changes_nothing(owner, app_conn, make_user):
    user = make_user(balance=2)
    begin(app_conn, user, "r1")
    settle(app_conn, user, "r1")
    owner.execute(  # even if its time is up, a settled hold is never settled again
        "update tokenbill.exchanges set expires_at = now() - interval '1 hour' where user_id = %s",
        [user],
    )
    assert expire(app_conn) == 0
    assert assistant(app_conn, user, "r1")["status"] == "done"
    assert balance_of(app_conn, user) == 1
    assert kinds(app_conn, user) == ["admin_adjustment", "reserve"]


def test_settle_racing_expire_settles_once(database_url, owner, make_user):
    user = make_user(balance=40)
    for i in range(20):
        with connect_as_app(database_url) as conn:
            begin(conn, user, f"race-{i}")
            if i % 2:
                deliver(conn, user, f"race-{i}")
    make_overdue(owner, user)
    barrier = threading.Barrier(2)

    def settle_all(_: int) -> None:
        with connect_as_app(database_url) as conn:
            barrier.wait()
            for i in range(20):
                settle(conn, user, f"race-{i}", "done", reply="answer")

    def expire_all(_: int) -> None:
        with connect_as_app(database_url) as conn:
            barrier.wait()
            expire(conn)

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(settle_all, 0), pool.submit(expire_all, 0)]:
            future.result()
    assert open_holds(owner, user) == 0
    closes = owner.execute(
        "select count(*) filter (where kind = 'release') as releases,"
        " count(*) filter (where kind = 'settle') as settles"
        " from api.ledger_entries where user_id = %s",
        [user],
    ).fetchone()
    released = owner.execute(
        "select count(*) as n from api.agent_holds where user_id = %s and status = 'released'",
        [user],
    ).fetchone()["n"]
    # one release row per released hold; a hold charged all it reserved needs no settle row
    assert (closes["releases"], closes["settles"]) == (released, 0)
    charged = owner.execute(
        "select sum(charged) as s from api.agent_holds where user_id = %s", [user]
    ).fetchone()["s"]
    assert balance_of(owner, user) == 40 - charged
    assert audit(owner) == []


def test_a_users_overdue_holds_are_settled_when_they_call_again(owner, app_conn, make_user):
    user = make_user(balance=1)
    begin(app_conn, user, "dead")
    make_overdue(owner, user)
    row = begin(app_conn, user, "next")  # the dead request's token is back first
    assert row["outcome"] == "started" and row["balance"] == 0
    assert assistant(app_conn, user, "dead")["status"] == "timeout"
    assert kinds(app_conn, user) == ["admin_adjustment", "reserve", "release", "reserve"]


# -- prices ---------------------------------------------------------------------------------
def test_a_per_model_price_reserves_its_maximum_and_charges_by_size(owner, app_conn, make_user):
    owner.execute(
        "insert into tokenbill.prices (agent, per_call, per_1k_input, per_1k_output, max_per_call)"
        " values ('big-model', 1, 100, 500, 6)"
    )
    try:
        user = make_user(balance=10)
        price = app_conn.execute("select * from api.agent_price('big-model')").fetchone()
        assert price["max_per_call"] == 6 and "at most 6 tokens" in price["label"]
        assert begin(app_conn, user, "small", agent="big-model")["balance"] == 4
        # 40 input chars = 10 model tokens → ceil(1.0) = 1; 16 output chars = 4 → ceil(2.0) = 2
        small = settle(app_conn, user, "small", reply="x" * 16, input_chars=40)
        assert (small["charged"], small["balance"]) == (4, 6)
        begin(app_conn, user, "huge", agent="big-model")
        huge = settle(app_conn, user, "huge", reply="x" * 40000, input_chars=40)
        assert (huge["charged"], huge["balance"]) == (6, 0)  # capped at max_per_call
        assert audit(owner) == []
    finally:
        owner.execute("delete from tokenbill.prices where agent = 'big-model'")


def test_unknown_agents_pay_the_default_price(app_conn, make_user):
    default = app_conn.execute("select * from api.agent_price('no-such-model')").fetchone()
    assert (default["agent"], default["max_per_call"], default["label"]) == ("*", 1, "1 token")
    user = make_user(balance=1)
    assert begin(app_conn, user, "r1", agent="no-such-model")["price"] == 1


def test_insufficient_tokens_reserves_and_stores_nothing(app_conn, make_user):
    user = make_user(balance=0)
    row = begin(app_conn, user, "r1")
    assert (row["outcome"], row["balance"], row["price"]) == ("insufficient_tokens", 0, 1)
    count = app_conn.execute(
        "select count(*) as n from api.messages where user_id = %s", [user]
    ).fetchone()
    assert count["n"] == 0 and kinds(app_conn, user) == [] and open_holds(app_conn, user) == 0


def test_someone_elses_conversation_is_not_found(app_conn, make_user):
    alice, bob = make_user(balance=2), make_user(balance=2)
    conv = begin(app_conn, alice, "r1")["conversation_id"]
    with pytest.raises(psycopg.Error) as exc:
        begin(app_conn, bob, "r1", conversation_id=conv)
    assert exc.value.sqlstate == "TB002"
    assert balance_of(app_conn, bob) == 2
    again = begin(app_conn, alice, "r2", conversation_id=conv)
    assert again["outcome"] == "started" and again["conversation_id"] == conv


@pytest.mark.parametrize("message", ["", "   ", "x" * 20001])
def test_bad_messages_raise_tb003(app_conn, make_user, message):
    user = make_user(balance=1)
    with pytest.raises(psycopg.Error) as exc:
        begin(app_conn, user, "r1", message)
    assert exc.value.sqlstate == "TB003"
    assert balance_of(app_conn, user) == 1


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


@pytest.fixture
def scratch_owner(admin_url: str):
    """The owner of a database of its own: for forging rows the shared one must never hold."""
    name = f"tokenbill_scratch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    url = make_conninfo(admin_url, dbname=name)
    try:
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            yield conn
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"drop database {name} with (force)")


def test_the_audit_sees_holds_the_ledger_disagrees_with(scratch_owner):
    """A compromised owner session posting hold rows behind the functions' back is caught."""
    owner = scratch_owner
    user = owner.execute("select api.register_user('x@example.test', 'x') as id").fetchone()["id"]
    admin = owner.execute("select api.register_user('a@example.test', 'x') as id").fetchone()["id"]
    owner.execute("select api.set_admin('a@example.test')")
    owner.execute("select api.admin_adjust(%s, %s, 3, 'setup')", [admin, user])
    begin(owner, user, "r1")
    assert audit(owner) == []
    owner.execute(
        "select tokenbill.post_entry(%s, 'settle', 1, p_request_id => 'r1', p_reason => 'forged')",
        [user],
    )
    owner.execute(
        "select tokenbill.post_entry(%s, 'release', 1, p_request_id => 'no-hold')", [user]
    )
    problems = sorted(audit(owner), key=lambda p: p["request_id"])
    assert [p["request_id"] for p in problems] == ["no-hold", "r1"]
    assert "without a hold" in problems[0]["problem"]
    assert "1 settle/release rows" in problems[1]["problem"]


@pytest.mark.parametrize(
    "statement",
    [
        "insert into tokenbill.exchanges (conversation_id, user_id, request_id, prompt, cost)"
        " values (gen_random_uuid(), gen_random_uuid(), 'x', 'hi', 1)",
        "update tokenbill.exchanges set reply = 'x'",
        "update tokenbill.exchanges set hold_status = 'released'",
        "select * from tokenbill.exchanges",
        "update tokenbill.prices set per_call = 0",
        "select * from tokenbill.conversations",
        "insert into api.conversations (user_id, title) values (gen_random_uuid(), 'x')",
        "update api.prices set per_call = 0",
    ],
)
def test_app_role_cannot_write_chat_tables(app_conn, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute(statement)

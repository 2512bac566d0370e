"""0023: one agent request is one exchange row (prompt, reply and hold), begun without a lock.

Adversaries: a client that fires the same request id twice at once (a retry racing the
original) must be reserved once and answered once — begin no longer takes the user's lock
before it looks, so the twin is caught by the exchange's unique key inside the reserving
statement; a database upgraded from 0022 must keep every message, hold and open reservation
(an open hold settled after the upgrade still charges exactly once, the audit stays empty).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import audit, balance_of, connect_as_app
from tests.support.agents import begin_request as begin
from tests.support.agents import ledger_kinds
from tests.support.agents import settle_request as settle
from tests.support.upgrade import funded_user, migrate_before
from webapp.ops import migrate


def twin_begin_while_first_is_open(
    database_url: str, user: uuid.UUID, twin_message: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Begin request 'twin' in an open transaction, fire its twin (same request id) while it
    is open — the twin waits for the user's row inside its reserving statement — then commit
    the first. Returns (the first's row, the twin's row)."""
    first = connect_as_app(database_url)
    first.autocommit = False
    first_row = begin(first, user, "twin", "the question")
    twin_row: dict[str, Any] = {}

    def twin() -> None:
        with connect_as_app(database_url) as conn:
            twin_row.update(begin(conn, user, "twin", twin_message))

    thread = threading.Thread(target=twin)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the twin did not wait for the first"
    first.commit()
    first.close()
    thread.join(10)
    return first_row, twin_row


@pytest.mark.parametrize(
    ("twin_message", "expected"),
    [("the question", "replayed"), ("another question", "mismatch")],
    ids=["same body", "other body"],
)
def test_a_twin_fired_while_the_first_is_open_is_reserved_once(
    database_url: str, owner: psycopg.Connection, make_user, twin_message: str, expected: str
) -> None:
    user = make_user(balance=5)
    first, twin = twin_begin_while_first_is_open(database_url, user, twin_message)
    assert first["outcome"] == "started"
    assert twin["outcome"] == expected
    assert twin["conversation_id"] == first["conversation_id"]
    if expected == "replayed":
        assert twin["status"] == "pending"
    assert balance_of(owner, user) == 4  # one reservation
    assert ledger_kinds(owner, user).count("reserve") == 1
    conversations = owner.execute(
        "select count(*) as n from tokenbill.conversations where user_id = %s", [user]
    ).fetchone()
    assert conversations["n"] == 1  # the twin started no conversation of its own
    assert audit(owner) == []


def test_one_request_is_one_row_shown_as_two_messages(
    owner: psycopg.Connection, app_conn, make_user
) -> None:
    user = make_user(balance=3)
    conversation = begin(app_conn, user, "r1", "What is 2 + 2?")["conversation_id"]
    pending = app_conn.execute(
        "select role, content, status, charged from api.messages where user_id = %s order by id",
        [user],
    ).fetchall()
    assert [tuple(m.values()) for m in pending] == [
        ("user", "What is 2 + 2?", "done", None),
        ("assistant", "", "pending", None),
    ]
    settle(app_conn, user, "r1", reply="4")
    rows = owner.execute(
        "select conversation_id, prompt, reply, reply_status, hold_status, charged"
        " from tokenbill.exchanges where user_id = %s",
        [user],
    ).fetchall()
    assert [tuple(r.values()) for r in rows] == [
        (conversation, "What is 2 + 2?", "4", "done", "settled", 1)
    ]
    settled = app_conn.execute(
        "select role, content, status, charged from api.messages where user_id = %s order by id",
        [user],
    ).fetchall()
    assert [tuple(m.values()) for m in settled] == [
        ("user", "What is 2 + 2?", "done", None),
        ("assistant", "4", "done", 1),
    ]


# --------------------------------------------------------------------------------------------
# Upgrading from 0022 keeps every request
# --------------------------------------------------------------------------------------------
MESSAGES = (
    "select conversation_id, user_id, request_id, role, content, status, error, cost,"
    " created_at, completed_at, charged from api.messages order by id"
)
HOLDS = (
    "select user_id, request_id, agent, reserved, status, input_chars, delivered_parts,"
    " delivered_chars, first_delivered_at, progress_at, created_at, expires_at, settled_at,"
    " charged, outcome from api.agent_holds order by id"
)


def test_upgrading_from_0022_keeps_every_message_and_hold(empty_db: str, tmp_path: Path) -> None:
    migrate_before(empty_db, tmp_path, "0023")
    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as conn:
        user = funded_user(conn, 20)
        conn.execute(
            "insert into tokenbill.prices (agent, per_call, per_1k_input, per_1k_output,"
            " max_per_call) values ('sized', 1, 0, 1000, 5)"
        )
        conversation = begin(conn, user, "done", "first")["conversation_id"]
        settle(conn, user, "done", reply="an answer")
        begin(conn, user, "released", "second", conversation)
        settle(conn, user, "released", outcome="failed", reply="")
        begin(conn, user, "partly", "third", conversation, agent="sized")
        settle(conn, user, "partly", outcome="disconnected", reply="ab")  # 2 of 5
        begin(conn, user, "open", "fourth")
        messages = conn.execute(MESSAGES).fetchall()
        holds = conn.execute(HOLDS).fetchall()
        balance = balance_of(conn, user)

    assert migrate.upgrade(empty_db)[0] == "0023"

    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as conn:
        assert conn.execute(MESSAGES).fetchall() == messages
        assert conn.execute(HOLDS).fetchall() == holds
        assert len(messages) == 8
        assert [h["charged"] for h in holds] == [1, 0, 2, None]
        assert balance_of(conn, user) == balance == 20 - 1 - 2 - 1
        assert audit(conn) == []
        # the open reservation settles once after the upgrade; a replay changes nothing
        assert settle(conn, user, "open")["charged"] == 1
        assert settle(conn, user, "open")["status"] == "already_settled"
        replay = begin(conn, user, "done", "first")
        assert (replay["outcome"], replay["reply"]) == ("replayed", "an answer")
        assert balance_of(conn, user) == balance
        assert audit(conn) == []


# --------------------------------------------------------------------------------------------
# Nothing reserved: begin looks why, and writes nothing
# --------------------------------------------------------------------------------------------
def test_an_unknown_user_or_no_price_is_refused_and_nothing_is_written(
    owner: psycopg.Connection, make_user
) -> None:
    stranger = uuid.uuid4()
    with pytest.raises(psycopg.Error) as caught:
        begin(owner, stranger, "r1")
    assert caught.value.sqlstate == "TB002"
    user = make_user(balance=5)
    with owner.transaction(force_rollback=True):
        owner.execute("delete from tokenbill.prices")  # no agent price and no '*' price
        with pytest.raises(psycopg.Error) as caught:
            begin(owner, user, "r1")
    assert caught.value.sqlstate == "TB002"
    assert "no price" in str(caught.value)
    written = owner.execute(
        "select (select count(*) from tokenbill.exchanges where user_id in (%s, %s)) as n,"
        " (select count(*) from tokenbill.ledger where user_id = %s and kind = 'reserve') as r",
        [stranger, user, user],
    ).fetchone()
    assert (written["n"], written["r"]) == (0, 0)
    assert balance_of(owner, user) == 5


def test_a_short_balance_is_refused_and_nothing_is_written(owner, app_conn, make_user) -> None:
    user = make_user(balance=0)
    row = begin(app_conn, user, "broke", "hi")
    assert (row["outcome"], row["balance"], row["conversation_id"]) == (
        "insufficient_tokens",
        0,
        None,
    )
    assert ledger_kinds(owner, user).count("reserve") == 0
    counts = owner.execute(
        "select (select count(*) from tokenbill.exchanges where user_id = %s) as e,"
        " (select count(*) from tokenbill.conversations where user_id = %s) as c",
        [user, user],
    ).fetchone()
    assert (counts["e"], counts["c"]) == (0, 0)


def test_the_owner_check_reads_one_conversation_not_all_of_the_users(empty_db: str) -> None:
    """An API client can own thousands of conversations. The owner check finds the
    conversation by its key: as `exists (... where id = $c and user_id = $u)`, when statistics
    say one conversation per user (the planner cannot tell the two indexes apart) the generic
    plan — a session's sixth call on — scanned conversations_user_idx on user_id and filtered
    on id, so every one of the user's conversations on every request; under one hot account
    every waiter's EvalPlanQual did it even for new conversations (throughput fell run after
    run as conversations piled up)."""
    migrate.upgrade(empty_db)
    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as owner:
        user = funded_user(owner, 100)
        conversation = begin(owner, user, "first")["conversation_id"]
        owner.execute(  # 200 users with one conversation each: statistics say one per user
            "with u as (insert into tokenbill.users (email, password_hash)"
            "  select 'many' || g || '@example.test', 'x' from generate_series(1, 200) g"
            "  returning id)"
            " insert into tokenbill.conversations (user_id, title) select id, 'one' from u"
        )
        owner.execute("analyze tokenbill.conversations")
        owner.execute(  # then this user piles up conversations the statistics do not know of
            "insert into tokenbill.conversations (user_id, title)"
            " select %s, 'old ' || g from generate_series(1, 300) g",
            [user],
        )

        def user_index_reads() -> int:
            owner.execute("select pg_stat_clear_snapshot()")
            return owner.execute(
                "select idx_tup_read as n from pg_stat_user_indexes"
                " where indexrelname = 'conversations_user_idx'"
            ).fetchone()["n"]

        before = user_index_reads()
        with connect_as_app(empty_db) as app:  # one session: its plans go generic
            for i in range(8):
                row = begin(app, user, f"r{i}", conversation_id=conversation)
                assert row["outcome"] == "started"
            app.execute("select pg_stat_force_next_flush()")
        time.sleep(0.2)
        assert user_index_reads() - before < 50  # not 300 a request


def test_the_history_is_the_newest_answered_exchanges_oldest_first(
    owner: psycopg.Connection, app_conn, make_user
) -> None:
    """0029: api.conversation_history reads the conversation's newest exchanges by its index;
    unanswered ones are skipped, the request being answered is left out, at most N whole
    exchanges within the character budget, oldest first."""
    user = make_user(balance=50)
    conversation = begin(app_conn, user, "q00", "prompt 00")["conversation_id"]
    settle(app_conn, user, "q00", reply="reply 00")
    for i in range(1, 12):
        begin(app_conn, user, f"q{i:02d}", f"prompt {i:02d}", conversation)
        if i % 4 == 0:
            settle(app_conn, user, f"q{i:02d}", outcome="failed", reply="")  # not answered
        else:
            settle(app_conn, user, f"q{i:02d}", reply=f"reply {i:02d}")

    def history(request_id: str, exchanges: int, budget: int) -> list[tuple[str, str]]:
        rows = app_conn.execute(
            "select role, content from api.conversation_history(%s, %s, %s, %s, %s)",
            [user, conversation, request_id, exchanges, budget],
        ).fetchall()
        return [(r["role"], r["content"]) for r in rows]

    assert history("q11", 3, 10_000) == [
        ("user", "prompt 07"), ("assistant", "reply 07"),
        ("user", "prompt 09"), ("assistant", "reply 09"),
        ("user", "prompt 10"), ("assistant", "reply 10"),
    ]  # fmt: skip
    assert history("q11", 20, 36) == [  # 18 characters an exchange: two fit
        ("user", "prompt 09"), ("assistant", "reply 09"),
        ("user", "prompt 10"), ("assistant", "reply 10"),
    ]  # fmt: skip
    assert history("q11", 0, 10_000) == []
    other = make_user()
    assert (
        app_conn.execute(  # someone else's conversation: nothing
            "select count(*) as n from api.conversation_history(%s, %s, 'x', 20, 10000)",
            [other, conversation],
        ).fetchone()["n"]
        == 0
    )

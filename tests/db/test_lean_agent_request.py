"""0021's leaner agent request keeps its guarantees where it does less.

Adversaries: a settle that moves no money no longer locks the user, so it must not be able to
deadlock with (or double-settle against) the expiry that a new request of the same user runs
under that lock; a compromised owner session writing hold or message rows behind the
functions' back must still be refused by the one CHECK per table, rule by rule, and caught by
the audit when it forges ledger rows.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import audit, balance_of, connect_as_app, connect_owner
from tests.support.agents import begin_request as begin
from tests.support.agents import make_overdue, open_holds
from tests.support.agents import settle_request as settle


def ledger(conn, user) -> list[tuple[str, int]]:
    rows = conn.execute(
        "select kind::text as kind, delta from tokenbill.ledger where user_id = %s order by id",
        [user],
    ).fetchall()
    return [(r["kind"], r["delta"]) for r in rows]


def test_a_full_price_settle_moves_no_money_and_needs_no_user_lock(
    database_url: str, owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    user = make_user(balance=3)
    with connect_as_app(database_url) as app:
        begin(app, user, "full")
        begin(app, user, "nothing")
        locker = connect_owner(database_url)
        locker.autocommit = False
        locker.execute("select 1 from tokenbill.users where id = %s for update", [user])
        try:
            app.execute("set lock_timeout = '2s'")
            row = settle(app, user, "full")  # would wait on the user's row before 0021
            assert (row["status"], row["message_status"], row["charged"]) == ("settled", "done", 1)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                settle(app, user, "nothing", "failed", reply="")  # a release moves money: waits
        finally:
            locker.rollback()
            locker.close()
        assert settle(app, user, "nothing", "failed", reply="")["charged"] == 0
    assert ledger(owner, user)[1:] == [("reserve", -1), ("reserve", -1), ("release", 1)]
    assert balance_of(owner, user) == 2
    assert audit(owner) == []


def test_a_per_size_price_below_its_maximum_returns_the_rest(
    owner: psycopg.Connection, app_conn: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    owner.execute(
        "insert into tokenbill.prices (agent, per_call, per_1k_output, max_per_call)"
        " values ('sized', 1, 1000, 5)"
    )
    user = make_user(balance=10)
    begin(app_conn, user, "small", agent="sized")
    row = settle(app_conn, user, "small", reply="abcd")  # 1 output token: 1 + 1 = 2 of 5
    assert row["charged"] == 2
    begin(app_conn, user, "big", agent="sized")
    assert settle(app_conn, user, "big", reply="x" * 400)["charged"] == 5  # capped: no row
    assert ledger(owner, user)[1:] == [("reserve", -5), ("settle", 3), ("reserve", -5)]
    assert balance_of(owner, user) == 3
    assert audit(owner) == []


def chat_list(conn: psycopg.Connection, user: uuid.UUID) -> list[uuid.UUID]:
    """The user's conversations in the chat page's order (webapp/agent.py's query)."""
    rows = conn.execute(
        "select id from api.conversations where user_id = %s order by updated_at desc", [user]
    ).fetchall()
    return [r["id"] for r in rows]


def test_the_chat_list_is_in_the_order_of_last_use(
    owner: psycopg.Connection, app_conn: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    """Whichever conversation a request continues is at the top of the list afterwards, and
    the others keep their order, including when the request continues the top one (which
    0041 leaves unwritten)."""
    user = make_user(balance=20)
    a = begin(app_conn, user, "a1")["conversation_id"]
    b = begin(app_conn, user, "b1")["conversation_id"]
    c = begin(app_conn, user, "c1")["conversation_id"]
    assert chat_list(owner, user) == [c, b, a]
    steps = [
        ("a2", a, [a, c, b]),
        ("a3", a, [a, c, b]),
        ("b2", b, [b, a, c]),
        ("b3", b, [b, a, c]),
        ("c2", c, [c, b, a]),
        ("a4", a, [a, c, b]),
    ]
    for request, conversation, expected in steps:
        begin(app_conn, user, request, conversation_id=conversation)
        settle(app_conn, user, request)
        assert chat_list(owner, user) == expected, request


def test_only_a_request_that_moves_its_conversation_up_writes_it(
    owner: psycopg.Connection, app_conn: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    """The settle never writes the conversation, nor does a request continuing the one on top
    of the list (0041: its row and index entries are what the touch cost); a request in an
    older one moves it up."""
    user = make_user(balance=5)
    older = begin(app_conn, user, "r1")["conversation_id"]
    top = begin(app_conn, user, "r2")["conversation_id"]

    def version(conversation: uuid.UUID) -> dict:
        return owner.execute(
            "select xmin::text as v, updated_at from tokenbill.conversations where id = %s",
            [conversation],
        ).fetchone()

    before = version(older), version(top)
    settle(app_conn, user, "r1")
    settle(app_conn, user, "r2")
    begin(app_conn, user, "r3", conversation_id=top)
    assert (version(older), version(top)) == before
    begin(app_conn, user, "r4", conversation_id=older)
    assert version(older)["updated_at"] > before[1]["updated_at"]
    assert version(top) == before[1]


@pytest.mark.parametrize("racer", ["sweep", "next_request"])
def test_fast_settles_racing_the_expiry_settle_once_without_deadlock(
    database_url: str,
    owner: psycopg.Connection,
    make_user: Callable[..., uuid.UUID],
    racer: str,
) -> None:
    """The expiry runs under the user's lock (sweep, or a new request of the same user);
    lock-free settles of the same holds run at the same moment: each hold closes once."""
    user = make_user(balance=60)
    with connect_as_app(database_url) as conn:
        for i in range(25):
            begin(conn, user, f"race-{i}")
            if i % 2:
                conn.execute(
                    "select api.record_agent_delivery(%s, %s, 1, 5, 10)", [user, f"race-{i}"]
                )
    make_overdue(owner, user)
    barrier = threading.Barrier(2)

    def settle_all() -> None:
        with connect_as_app(database_url) as conn:
            barrier.wait()
            for i in reversed(range(25)):
                settle(conn, user, f"race-{i}")

    def expire_all() -> None:
        with connect_as_app(database_url) as conn:
            barrier.wait()
            if racer == "sweep":
                conn.execute("select api.expire_agent_holds()")
            else:
                begin(conn, user, "the-next-request")

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(settle_all), pool.submit(expire_all)]:
            future.result()  # a deadlock would raise here
    expected_open = 1 if racer == "next_request" else 0
    assert open_holds(owner, user) == expected_open
    closed = owner.execute(
        "select count(*) filter (where hold_status = 'released') as released,"
        " coalesce(sum(charged), 0) as charged from tokenbill.exchanges"
        " where user_id = %s and request_id like 'race-%%'",
        [user],
    ).fetchone()
    releases = [k for k, _ in ledger(owner, user) if k == "release"]
    assert len(releases) == closed["released"]
    assert ("settle", 0) not in ledger(owner, user)
    assert balance_of(owner, user) == 60 - closed["charged"] - expected_open
    assert audit(owner) == []


def test_the_user_and_conversation_of_every_request_exist_and_stay(
    owner: psycopg.Connection, app_conn, make_user
) -> None:
    """What replaced the foreign keys of messages (user, conversation) and agent_holds (user)
    (0021; one exchange row since 0023): nothing deletes the user or the conversation, and
    begin writes only rows whose conversation is the user's."""
    user = make_user(balance=3)
    conversation = begin(app_conn, user, "new")["conversation_id"]
    begin(app_conn, user, "continued", conversation_id=conversation)
    settle(app_conn, user, "new")
    for statement in (
        "delete from tokenbill.users where id = %s",  # 0020's never-delete guard
        "delete from tokenbill.conversations where id = %s",
        "truncate tokenbill.conversations cascade",
    ):
        with owner.transaction(force_rollback=True), pytest.raises(psycopg.Error) as caught:
            target = user if "users" in statement else conversation
            owner.execute(statement, [target] if "%s" in statement else [])
        assert caught.value.sqlstate == "TB001"
    strays = owner.execute(
        "select (select count(*) from tokenbill.exchanges m"
        "         left join tokenbill.conversations c on c.id = m.conversation_id"
        "        where c.user_id is distinct from m.user_id) as messages,"
        "       (select count(*) from tokenbill.exchanges h"
        "        where not exists (select from tokenbill.users u where u.id = h.user_id)"
        "           or not exists (select from tokenbill.ledger l where l.user_id = h.user_id"
        "                           and l.request_id = h.request_id and l.kind = 'reserve'))"
        "        as holds"
    ).fetchone()
    assert strays == {"messages": 0, "holds": 0}


def test_another_users_conversation_stays_refused(owner, app_conn, make_user) -> None:
    """The owner check moved into the price lookup; it still refuses, also without tokens,
    and the refused request does not move the owner's conversation (0041 writes it only
    after the check, and only when it is not on top of its own user's list)."""
    owner_of_it, intruder, broke = make_user(balance=2), make_user(balance=2), make_user()
    conversation = begin(app_conn, owner_of_it, "mine")["conversation_id"]
    begin(app_conn, owner_of_it, "newer")  # the owner's list: another one on top now
    version = "select xmin::text as v, updated_at from tokenbill.conversations where id = %s"
    before = owner.execute(version, [conversation]).fetchone()
    for user in (intruder, broke):
        with pytest.raises(psycopg.Error) as caught:
            begin(app_conn, user, "theirs", conversation_id=conversation)
        assert caught.value.sqlstate == "TB002"
    assert balance_of(app_conn, intruder) == 2
    assert owner.execute(version, [conversation]).fetchone() == before


# --------------------------------------------------------------------------------------------
# One CHECK per table, every rule (0023: the hold and both messages are one exchange row)
# --------------------------------------------------------------------------------------------
EXCHANGE_BREAKS = {
    "empty request id": "request_id = ''",
    "request id over 200": "request_id = repeat('x', 201)",
    "empty request hash": "request_hash = ''",
    "request hash over 200": "request_hash = repeat('x', 201)",
    "nothing reserved": "reserved = 0",
    "free message": "cost = 0",
    "unknown hold status": "hold_status = 'lost'",
    "unknown reply status": "reply_status = 'lost'",
    "negative input": "input_chars = -1",
    "negative parts": "delivered_parts = -1",
    "negative chars": "delivered_chars = -1",
    "held but settled_at": "settled_at = now()",
    "held but charged": "charged = 0",
    "held but the reply done": "reply_status = 'done'",
    "settled without settled_at": "hold_status = 'settled', charged = 1",
    "settled without charged": "hold_status = 'settled', settled_at = now()",
    "settled above reserved": "hold_status = 'settled', settled_at = now(), charged = 2",
    "settled below zero": "hold_status = 'settled', settled_at = now(), charged = -1",
    "released but charged": "hold_status = 'released', settled_at = now(), charged = 1",
    "released without settled_at": "hold_status = 'released', charged = 0",
    "no hold but reserved": "hold_status = null, reply_status = 'done'",
    "no hold but charged": "hold_status = null, reserved = null, reply_status = 'done',"
    " charged = 1",
    "no hold, reply pending": "hold_status = null, reserved = null",
}
EXCHANGE_OK = {
    "settled in full": "hold_status = 'settled', settled_at = now(), charged = 1",
    "settled for nothing": "hold_status = 'settled', settled_at = now(), charged = 0",
    "released": "hold_status = 'released', settled_at = now(), charged = 0",
    "settled, reply done": "hold_status = 'settled', settled_at = now(), charged = 1,"
    " reply_status = 'done'",
    "from before 0014 (no hold)": "hold_status = null, reserved = null, request_hash = null,"
    " reply_status = 'done'",
}


@pytest.fixture
def one_hold(owner: psycopg.Connection, app_conn, make_user) -> uuid.UUID:
    user = make_user(balance=1)
    begin(app_conn, user, "r1")
    return user


@pytest.mark.parametrize("change", EXCHANGE_BREAKS.values(), ids=EXCHANGE_BREAKS.keys())
def test_every_exchange_rule_is_checked(owner: psycopg.Connection, one_hold, change: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        owner.execute(f"update tokenbill.exchanges set {change} where user_id = %s", [one_hold])
    assert caught.value.diag.constraint_name == "exchanges_valid"


@pytest.mark.parametrize("change", EXCHANGE_OK.values(), ids=EXCHANGE_OK.keys())
def test_every_valid_exchange_state_passes(
    owner: psycopg.Connection, one_hold, change: str
) -> None:
    with owner.transaction(force_rollback=True):
        owner.execute(f"update tokenbill.exchanges set {change} where user_id = %s", [one_hold])


def test_the_audit_catches_a_second_close_of_a_full_price_settle(
    owner: psycopg.Connection, app_conn, make_user
) -> None:
    """No settle row is expected when a request charged all it reserved; a forged one that
    moves money (or a second one) is still reported."""
    user = make_user(balance=3)
    begin(app_conn, user, "r1")
    settle(app_conn, user, "r1")
    assert audit(owner) == []
    with owner.transaction(force_rollback=True):  # forged rows never stay in the database
        owner.execute(
            "select tokenbill.post_entry(%s, 'settle', 0, p_request_id => 'r1', p_reason => 'x')",
            [user],
        )
        assert audit(owner) == []  # a 0-delta settle row: how 0014-0020 recorded it
        owner.execute(
            "select tokenbill.post_entry(%s, 'settle', 1, p_request_id => 'r1', p_reason => 'x')",
            [user],
        )
        problems = [p for p in audit(owner) if p["request_id"] == "r1"]
        assert problems and "2 settle/release rows" in problems[0]["problem"]

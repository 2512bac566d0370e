"""0030: api.conversation_page, one page of a conversation for its owner, newest page first.

Adversaries: an API client whose conversation has thousands of exchanges made every chat page
view and JSON read load all of them (api.messages, no limit); and under tied statistics the
planner served `conversation = $c and user = $u` from exchanges_pkey (every one of the user's
exchanges) or read the whole conversation through a bitmap and sorted it. A page reads at most
its size + 1 entries of exchanges_conversation_idx, whatever the statistics say.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.support.agents import begin_request as begin
from tests.support.agents import settle_request as settle
from tests.support.plans import (
    assert_reads_only_by,
    explaining,
    inner_plans,
    tied_conversation,
)
from webapp.ops import migrate

PAGE_SQL = "select * from api.conversation_page(%s, %s, %s, %s)"


def page(conn: psycopg.Connection, user, conversation, before, limit) -> list[dict[str, Any]]:
    return conn.execute(PAGE_SQL, [user, conversation, before, limit]).fetchall()


def prompts(rows: list[dict[str, Any]]) -> list[str]:
    return [r["content"] for r in rows if r["role"] == "user"]


def conversation_of(app_conn, user: uuid.UUID, exchanges: int) -> uuid.UUID:
    """A conversation of ``exchanges`` exchanges: every third failed, the last still open."""
    conversation = begin(app_conn, user, "q00", "prompt 00")["conversation_id"]
    settle(app_conn, user, "q00", reply="reply 00")
    for i in range(1, exchanges):
        begin(app_conn, user, f"q{i:02d}", f"prompt {i:02d}", conversation)
        if i == exchanges - 1:
            continue  # still being answered
        if i % 3 == 0:
            settle(app_conn, user, f"q{i:02d}", outcome="failed", reply="")
        else:
            settle(app_conn, user, f"q{i:02d}", reply=f"reply {i:02d}")
    return conversation


def test_pages_walk_back_from_the_newest_each_oldest_first(owner, app_conn, make_user) -> None:
    user = make_user(balance=50)
    conversation = conversation_of(app_conn, user, 7)

    newest = page(app_conn, user, conversation, None, 3)
    assert prompts(newest) == ["prompt 04", "prompt 05", "prompt 06"]
    assert [r["role"] for r in newest] == ["user", "assistant"] * 3
    ids = owner.execute(
        "select request_id, id from tokenbill.exchanges where conversation_id = %s",
        [conversation],
    ).fetchall()
    exchange_id = {r["request_id"]: r["id"] for r in ids}
    # the cursor to the earlier page is the oldest exchange shown, on every row
    assert {r["earlier"] for r in newest} == {exchange_id["q04"]}

    middle = page(app_conn, user, conversation, newest[0]["earlier"], 3)
    assert prompts(middle) == ["prompt 01", "prompt 02", "prompt 03"]
    assert {r["earlier"] for r in middle} == {exchange_id["q01"]}

    oldest = page(app_conn, user, conversation, middle[0]["earlier"], 3)
    assert prompts(oldest) == ["prompt 00"]
    assert oldest[0]["earlier"] is None  # nothing older: no link
    assert page(app_conn, user, conversation, exchange_id["q00"], 3) == []

    # exactly a page's worth left: no earlier page
    assert {r["earlier"] for r in page(app_conn, user, conversation, exchange_id["q03"], 3)} == {
        None
    }


def test_a_page_says_what_api_messages_says(owner, app_conn, make_user) -> None:
    """The chat page renders the same fields as before: the page is api.messages' rows."""
    user = make_user(balance=50)
    conversation = conversation_of(app_conn, user, 7)
    columns = ("role", "content", "status", "request_id", "charged", "created_at")
    before = app_conn.execute(
        f"select {', '.join(columns)} from api.messages"
        " where conversation_id = %s and user_id = %s order by id",
        [conversation, user],
    ).fetchall()
    rows = page(app_conn, user, conversation, None, 100)
    assert [{c: r[c] for c in columns} for r in rows] == before
    statuses = {r["status"] for r in rows if r["role"] == "assistant"}
    assert statuses == {"done", "failed", "pending"}
    assert {r["earlier"] for r in rows} == {None}


def test_the_page_size_is_capped_and_nonsense_reads_nothing(app_conn, make_user) -> None:
    user = make_user(balance=110)
    conversation = begin(app_conn, user, "first")["conversation_id"]
    for i in range(100):  # the real path: the session's database keeps its invariants
        begin(app_conn, user, f"more {i}", conversation_id=conversation)
    rows = page(app_conn, user, conversation, None, 1_000_000)
    assert len(rows) == 200  # 100 exchanges at most, whatever is asked
    assert rows[0]["earlier"] is not None
    assert page(app_conn, user, conversation, None, 0) == []
    assert page(app_conn, user, conversation, None, -5) == []
    assert page(app_conn, user, conversation, 0, 10) == []


def test_someone_elses_conversation_reads_nothing(app_conn, make_user) -> None:
    alice, mallory = make_user(balance=5), make_user(balance=5)
    conversation = begin(app_conn, alice, "secret", "alice's secret")["conversation_id"]
    assert page(app_conn, mallory, conversation, None, 50) == []
    assert page(app_conn, mallory, conversation, 2**62, 50) == []
    assert page(app_conn, alice, uuid.uuid4(), None, 50) == []
    assert prompts(page(app_conn, alice, conversation, None, 50)) == ["alice's secret"]


def test_a_page_reads_one_page_of_the_conversation_index_under_a_statistics_tie(
    empty_db: str,
) -> None:
    """Under the tie (tests/support/plans.py) api.messages' query read the user's 6000 entries
    of exchanges_pkey (BitmapAnd) and the whole conversation; a page must read page size + 1
    entries of the conversation's index, in the first calls (custom plans) and later ones
    (generic)."""
    migrate.upgrade(empty_db)
    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as owner:
        user, conversation = tied_conversation(owner)
    with explaining(empty_db) as (conn, notices):
        before = None
        for _ in range(8):  # one session: plpgsql's plans go generic after five
            rows = page(conn, user, conversation, before, 50)
            assert len(rows) == 100
            before = rows[0]["earlier"]
    plans = inner_plans(notices, "api.conversation_page")
    assert len(plans) == 8
    for plan in plans:
        assert_reads_only_by(plan, "exchanges_conversation_idx", 2 * 51)

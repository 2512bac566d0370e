"""0033: the history sent to the model reads the conversation's index in its order, whatever
the statistics say.

Adversary: a user (an API client, say) whose conversation has thousands of exchanges, on a
database whose statistics say conversations are short. 0029's query let the planner serve
`conversation = $c and user = $u` by a BitmapAnd of exchanges_pkey (all of the user's
exchanges) and the conversation's index (all of the conversation), then sort: every agent
request continuing that conversation read all of it, before it was even charged.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from tests.support.plans import (
    BIG,
    assert_reads_only_by,
    explaining,
    inner_plans,
    tied_conversation,
)
from webapp.ops import migrate

HISTORY_SQL = "select * from api.conversation_history(%s, %s, %s, %s, %s)"


def test_the_history_reads_its_exchanges_not_the_conversation_under_a_statistics_tie(
    empty_db: str,
) -> None:
    migrate.upgrade(empty_db)
    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as owner:
        user, conversation = tied_conversation(owner)
    with explaining(empty_db) as (conn, notices):
        for i in range(8):  # one session: plpgsql's plans go generic after five
            call = [user, conversation, f"new {i}", 20, 100_000]
            turns = conn.execute(HISTORY_SQL, call).fetchall()
            assert [t["content"] for t in turns[-2:]] == ["p", "r"] and len(turns) == 40
    plans = inner_plans(notices, "api.conversation_history")
    assert len(plans) == 8  # the first, custom plans and the generic one after five
    for plan in plans:
        assert_reads_only_by(plan, "exchanges_conversation_idx", 2 * 21)
    assert BIG > 2 * 21


def test_unanswered_exchanges_are_skipped_not_counted(empty_db: str) -> None:
    """Skipping costs one entry each: a conversation whose newest exchanges failed still
    reaches back to its answered ones (the LIMIT counts kept exchanges)."""
    migrate.upgrade(empty_db)
    with psycopg.connect(empty_db, autocommit=True, row_factory=dict_row) as owner:
        user, conversation = tied_conversation(owner)
        owner.execute(
            "insert into tokenbill.exchanges (conversation_id, user_id, request_id, prompt,"
            " reply_status, cost) select %s, %s, 'failed ' || g, 'lost', 'failed', 1"
            " from generate_series(1, 30) g",
            [conversation, user],
        )
        turns = owner.execute(HISTORY_SQL, [user, conversation, "now", 3, 100_000]).fetchall()
    assert [t["content"] for t in turns] == ["p", "r"] * 3

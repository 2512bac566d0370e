"""What one billed agent request sends to PostgreSQL: billing is begin and settle, one round
trip each.

Every statement is its own transaction in autocommit (no BEGIN/COMMIT around it) on a
connection handed out without a liveness ping (webapp/db.py); a request that starts a
conversation looks up no history, one that continues it adds one statement. Counted from
libpq's own trace of the real connection (tests/support/pg_wire.py).
"""

from __future__ import annotations

import json

from tests.support.agents import ask, bearer, create_key, stream_call
from tests.support.pg_wire import round_trips
from webapp.db import get_db

AUTHENTICATION = [  # the key's user and account, in one statement
    "select id, email, is_admin, balance, low_balance_threshold, low_balance_alert"
    " from api.user_for_api_key($1) as k (user_id) join api.accounts on accounts.id = k.user_id",
]
BEGIN = "select * from api.begin_agent_request($1, $2, $3, $4, $5, $6, $7)"
SETTLE = "select * from api.settle_agent_request($1, $2, $3, $4, $5, $6, $7)"


def test_a_billed_request_sends_begin_and_settle_after_its_authentication(make_app, owner, member):
    app = make_app(DATABASE_POOL_MAX=1)
    user, _ = member(balance=5)
    client = app.test_client()
    headers = bearer(create_key(owner, user))
    assert ask(client, headers=headers).status_code == 200  # the first also sweeps old holds
    with app.app_context(), round_trips(get_db()) as sent:
        response = ask(client, headers=headers)
    assert response.status_code == 200 and response.json["balance"] == 3
    assert sent == [*AUTHENTICATION, BEGIN, SETTLE]


def test_a_continued_conversation_adds_its_history_lookup(make_app, owner, member):
    app = make_app(DATABASE_POOL_MAX=1)
    user, _ = member(balance=5)
    client = app.test_client()
    headers = bearer(create_key(owner, user))
    first = ask(client, headers=headers)
    with app.app_context(), round_trips(get_db()) as sent:
        response = ask(client, headers=headers, conversation_id=first.json["conversation_id"])
    assert response.status_code == 200 and response.json["balance"] == 3
    assert sent[: len(AUTHENTICATION) + 1] == [*AUTHENTICATION, BEGIN]
    assert sent[-1] == SETTLE
    (history,) = sent[len(AUTHENTICATION) + 1 : -1]  # one statement, no BEGIN/COMMIT
    assert "api.conversation_history(" in history


def test_no_part_of_an_answer_leaves_before_a_commit_that_covers_its_reservation(
    make_app, owner, member
):
    """The reservation commits without waiting for its WAL flush (0037); what makes it
    durable is the next synchronous commit. A streamed answer's first part reaches the client
    only after its delivery record has committed; a JSON answer only after the settle (the
    wire order of the test above: the response is built after SETTLE returned)."""
    app = make_app()
    user, _ = member(balance=5)
    response, lines = stream_call(app.test_client(), bearer(create_key(owner, user)), "hello")
    next(lines)  # the header line: price and ids, nothing of the answer
    assert "delta" in json.loads(next(lines))
    held = owner.execute(
        "select delivered_parts from api.agent_holds where user_id = %s", [user]
    ).fetchone()
    assert held["delivered_parts"] >= 1  # committed (another connection sees it) before the part
    response.close()

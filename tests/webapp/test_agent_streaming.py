"""The agent endpoint's streamed replies: charged once anything reached the client, else free."""

from __future__ import annotations

import json

from tests.conftest import audit, balance_of
from tests.support.agents import (
    FailsMidStream,
    NeverAnswers,
    ask,
    bearer,
    create_key,
    ledger_kinds,
    ndjson,
    open_holds,
    stream_call,
)
from webapp.agents.offline import OfflineAgent


# -- streaming -----------------------------------------------------------------------------
def test_streaming_happy_path(app, owner, member):
    user, _ = member(balance=2)
    response = ask(
        app.test_client(), "stream me", headers=bearer(create_key(owner, user)), stream=True
    )
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert response.headers["X-Token-Balance"] == "1"
    lines = ndjson(response.data)
    deltas = [line["delta"] for line in lines if "delta" in line]
    assert len(deltas) > 1
    assert "".join(deltas) == OfflineAgent().reply([], "stream me")
    assert lines[-1] == {"done": True, "balance": 1, "cost": 1, "agent": "offline"}
    stored = owner.execute(
        "select content from api.messages where user_id = %s and role = 'assistant'", [user]
    ).fetchone()
    assert stored["content"] == "".join(deltas)


def test_mid_stream_failure_after_parts_is_charged_and_partial(make_app, owner, member):
    app = make_app(AGENT=FailsMidStream)
    user, _ = member(balance=2)
    response = ask(app.test_client(), headers=bearer(create_key(owner, user)), stream=True)
    lines = ndjson(response.data)
    assert [line["delta"] for line in lines if "delta" in line] == ["Half an ", "answer"]
    assert lines[-1]["partial"] is True and lines[-1]["balance"] == 1
    assert lines[-1]["cost"] == 1 and not lines[-1].get("done")
    assert ledger_kinds(owner, user)[-1] == "reserve"
    stored = owner.execute(
        "select status, content from api.messages where user_id = %s and role = 'assistant'",
        [user],
    ).fetchone()
    assert (stored["status"], stored["content"]) == ("partial", "Half an answer")


def test_client_leaving_mid_stream_is_charged(app, owner, member):
    """The adversary: read most of the answer, then reset the connection to keep the token."""
    user, _ = member(balance=1)
    response, chunks = stream_call(
        app.test_client(), bearer(create_key(owner, user)), "a long question"
    )
    assert json.loads(next(chunks))["request_id"]
    first = json.loads(next(chunks))["delta"]
    response.close()  # the browser tab closed
    assert ledger_kinds(owner, user)[-1] == "reserve"
    assert balance_of(owner, user) == 0
    stored = owner.execute(
        "select status, content from api.messages where user_id = %s and role = 'assistant'",
        [user],
    ).fetchone()
    assert stored["status"] == "partial" and stored["content"] == first
    assert audit(owner) == []


def test_client_leaving_before_the_first_part_is_released(app, owner, member):
    user, _ = member(balance=1)
    response, lines = stream_call(app.test_client(), bearer(create_key(owner, user)), "never mind")
    assert json.loads(next(lines))["request_id"]
    response.close()  # gone after the header line, before any part of the answer
    assert ledger_kinds(owner, user)[-2:] == ["reserve", "release"]
    assert balance_of(owner, user) == 1 and open_holds(owner, user) == 0


def test_stream_timeout_before_any_part_releases(make_app, owner, member):
    app = make_app(AGENT=NeverAnswers, AGENT_TIMEOUT_SECONDS=0.05)
    user, _ = member(balance=1)
    response = ask(app.test_client(), headers=bearer(create_key(owner, user)), stream=True)
    last = ndjson(response.data)[-1]
    assert "error" in last and last["cost"] == 0
    assert balance_of(owner, user) == 1

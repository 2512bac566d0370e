"""POST /api/agent: authenticated, rate limited, reserved before running, settled by delivery."""

from __future__ import annotations

import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import audit, balance_of
from tests.support.agents import (
    FailingAgent,
    NeverAnswers,
    RecordingAgent,
    ask,
    bearer,
    begin_request,
    create_key,
    ledger_kinds,
    login,
    make_overdue,
    ndjson,
    open_holds,
)
from webapp.agents import build_agent
from webapp.agents.llm import LLMAgent
from webapp.agents.offline import LABEL, OfflineAgent


def message_count(conn, user) -> int:
    row = conn.execute("select count(*) as n from api.messages where user_id = %s", [user])
    return row.fetchone()["n"]


# -- authentication and CSRF ---------------------------------------------------------------
def test_unauthenticated_call_is_401_json(client):
    response = ask(client)
    assert response.status_code == 401
    assert response.is_json and "error" in response.json
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_chat_page_redirects_anonymous_users(client):
    response = client.get("/")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_session_call_answers_and_charges_one_token(app, owner, member):
    user, email = member(balance=3)
    response = ask(login(app, email), "What is tokenbill?")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["reply"].startswith(LABEL) and "What is tokenbill?" in body["reply"]
    assert body["balance"] == 2 and response.headers["X-Token-Balance"] == "2"
    assert balance_of(owner, user) == 2
    assert ledger_kinds(owner, user) == ["admin_adjustment", "reserve"]
    assert (body["price"], body["cost"]) == (1, 1)
    stored = owner.execute(
        "select role, content, status from api.messages where conversation_id = %s order by id",
        [body["conversation_id"]],
    ).fetchall()
    assert [(m["role"], m["status"]) for m in stored] == [("user", "done"), ("assistant", "done")]
    assert stored[1]["content"] == body["reply"]


def test_cookie_call_needs_the_csrf_header(make_app, owner, member):
    app = make_app(WTF_CSRF_ENABLED=True)
    user, email = member(balance=3)
    client = app.test_client()
    page = client.get("/auth/login")
    token = re.search(rb'name="csrf-token" content="([^"]+)"', page.data).group(1).decode()
    client.post(
        "/auth/login",
        data={"email": email, "password": "correct horse battery", "csrf_token": token},
    )

    refused = ask(client)
    assert refused.status_code == 400 and refused.is_json
    assert balance_of(owner, user) == 3 and message_count(owner, user) == 0

    chat = client.get("/")
    token = re.search(rb'name="csrf-token" content="([^"]+)"', chat.data).group(1).decode()
    accepted = ask(client, headers={"X-CSRFToken": token})
    assert accepted.status_code == 200 and balance_of(owner, user) == 2


def test_api_key_call_needs_no_csrf_token(make_app, owner, member):
    app = make_app(WTF_CSRF_ENABLED=True)
    user, _ = member(balance=1)
    response = ask(app.test_client(), headers=bearer(create_key(owner, user)))
    assert response.status_code == 200 and response.json["balance"] == 0


def test_a_bad_key_is_401_even_with_a_valid_session(app, owner, member):
    user, email = member(balance=1)
    response = ask(login(app, email), headers=bearer("tb_not-a-real-key"))
    assert response.status_code == 401
    assert balance_of(owner, user) == 1


# -- charging ------------------------------------------------------------------------------
def test_empty_balance_is_402_and_nothing_runs(app, owner, member):
    user, _ = member(balance=0)
    before = ledger_kinds(owner, user)
    response = ask(app.test_client(), headers=bearer(create_key(owner, user)))
    assert response.status_code == 402
    assert response.json == {
        "error": "You need more tokens to use the agent",
        "buy_url": "/billing/buy",
        "balance": 0,
        "price": 1,
    }
    assert response.headers["X-Token-Balance"] == "0"
    assert ledger_kinds(owner, user) == before == []
    assert message_count(owner, user) == 0


def test_64_concurrent_calls_on_10_tokens_serve_exactly_10(make_app, owner, member):
    app = make_app(RATELIMIT_ENABLED=True, AGENT_RATE_LIMIT="1000 per minute")
    user, _ = member(balance=10)
    headers = bearer(create_key(owner, user))
    barrier = threading.Barrier(64)

    def call(i: int) -> int:
        client = app.test_client()
        barrier.wait()
        return ask(client, f"question {i}", headers=headers).status_code

    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(call, range(64)))
    assert statuses.count(200) == 10
    assert statuses.count(402) == 54
    assert balance_of(owner, user) == 0
    assert ledger_kinds(owner, user).count("reserve") == 10
    assert "release" not in ledger_kinds(owner, user)
    assert audit(owner) == []


@pytest.mark.parametrize("agent", [FailingAgent, FailingAgent()])
def test_agent_failure_releases_the_token(make_app, owner, member, agent):
    app = make_app(AGENT=agent)  # a class or an instance: both plug in
    user, _ = member(balance=2)
    response = ask(app.test_client(), headers=bearer(create_key(owner, user)))
    assert response.status_code == 502
    assert response.json["balance"] == 2 and response.headers["X-Token-Balance"] == "2"
    assert "tokens were returned" in response.json["error"]
    assert "provider is down" not in response.json["error"]  # internals stay internal
    assert ledger_kinds(owner, user) == ["admin_adjustment", "reserve", "release"]
    assert balance_of(owner, user) == 2
    status = owner.execute(
        "select status, error from api.messages where user_id = %s and role = 'assistant'", [user]
    ).fetchone()
    assert status["status"] == "failed" and "provider is down" in status["error"]


def test_agent_timeout_is_504_and_releases(make_app, owner, member):
    app = make_app(AGENT=NeverAnswers, AGENT_TIMEOUT_SECONDS=0.05)
    user, _ = member(balance=1)
    response = ask(app.test_client(), headers=bearer(create_key(owner, user)))
    assert response.status_code == 504
    assert response.json["balance"] == 1
    assert ledger_kinds(owner, user)[-2:] == ["reserve", "release"]


# -- idempotency ---------------------------------------------------------------------------
def test_same_idempotency_key_is_charged_once_and_replays_the_reply(app, owner, member):
    user, _ = member(balance=5)
    headers = {**bearer(create_key(owner, user)), "Idempotency-Key": "retry-me-1"}
    client = app.test_client()
    first = ask(client, "first text", headers=headers)
    second = ask(client, "first text", headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json["reply"] == first.json["reply"]
    assert second.json["conversation_id"] == first.json["conversation_id"]
    assert second.json["replayed"] is True and second.json["cost"] == 1
    assert balance_of(owner, user) == 4
    assert ledger_kinds(owner, user).count("reserve") == 1
    request_ids = owner.execute(
        "select request_id from api.ledger_entries where user_id = %s and kind = 'reserve'",
        [user],
    ).fetchall()
    assert [r["request_id"] for r in request_ids] == ["retry-me-1"]


@pytest.mark.parametrize(
    "second",
    [{"message": "changed text"}, {"message": "first text", "conversation_id": str(uuid.uuid4())}],
)
def test_a_reused_key_with_another_body_is_422_and_free(app, owner, member, second):
    """The adversary: replaying a paid key with a new question to get a new answer for free."""
    user, _ = member(balance=5)
    headers = {**bearer(create_key(owner, user)), "Idempotency-Key": "reused-key"}
    client = app.test_client()
    assert ask(client, "first text", headers=headers).status_code == 200
    kinds_before = ledger_kinds(owner, user)
    response = client.post("/api/agent", json=second, headers=headers)
    assert response.status_code == 422, response.json
    assert "different request body" in response.json["error"]
    assert response.json["balance"] == 4 and "reply" not in response.json
    assert ledger_kinds(owner, user) == kinds_before
    assert message_count(owner, user) == 2
    # the original body still replays, and a stream flag is not part of the body's identity
    again = ask(client, "first text", headers=headers, stream=True)
    assert again.status_code == 200 and ndjson(again.data)[-1]["replayed"] is True


def test_replay_of_a_running_request_is_409(app, owner, app_conn, member):
    user, _ = member(balance=5)
    begin_request(app_conn, user, "still-running")
    response = ask(
        app.test_client(),
        headers={**bearer(create_key(owner, user)), "Idempotency-Key": "still-running"},
    )
    assert response.status_code == 409 and response.json["replayed"] is True
    assert balance_of(owner, user) == 4


def test_a_request_left_pending_by_a_dead_worker_is_settled_by_its_retry(
    app, owner, app_conn, member
):
    user, _ = member(balance=5)
    begin_request(app_conn, user, "worker-died")  # ...and the worker was killed at once
    make_overdue(owner, user, "worker-died")
    assert balance_of(owner, user) == 4

    headers = {**bearer(create_key(owner, user)), "Idempotency-Key": "worker-died"}
    retry = ask(app.test_client(), headers=headers)
    # nothing had been delivered: the expiry rule released it, and the retry learns so for free
    assert retry.status_code == 504 and retry.json["replayed"] is True
    assert balance_of(owner, user) == 5
    assert ledger_kinds(owner, user) == ["admin_adjustment", "reserve", "release"]
    assert open_holds(owner, user) == 0
    assert audit(owner) == []


@pytest.mark.parametrize(("hold", "timeout", "expected"), [(1, 10, 15), (0, 10, 50), (90, 10, 90)])
def test_a_hold_outlives_the_call_it_reserves_for(make_app, owner, member, hold, timeout, expected):
    """A misconfigured operator cannot make holds expire under live calls."""
    app = make_app(AGENT_HOLD_SECONDS=hold, AGENT_TIMEOUT_SECONDS=timeout)
    user, _ = member(balance=1)
    assert ask(app.test_client(), headers=bearer(create_key(owner, user))).status_code == 200
    row = owner.execute(
        "select extract(epoch from expires_at - created_at)::integer as s from api.agent_holds"
        " where user_id = %s",
        [user],
    ).fetchone()
    assert row["s"] == expected


def test_the_periodic_sweep_settles_other_users_expired_holds(app, owner, app_conn, member):
    import webapp.metering

    gone, _ = member(balance=2)
    begin_request(app_conn, gone, "abandoned")
    app_conn.execute("select api.record_agent_delivery(%s, 'abandoned', 3, 40, 10)", [gone])
    make_overdue(owner, gone)
    webapp.metering._last_sweep = 0.0  # the sweep runs at most once a minute per process

    caller, _ = member(balance=1)
    assert ask(app.test_client(), headers=bearer(create_key(owner, caller))).status_code == 200
    # output had reached the client before the worker died: the expiry rule charges it
    assert open_holds(owner, gone) == 0 and balance_of(owner, gone) == 1
    stored = owner.execute(
        "select status, charged from api.messages where user_id = %s and role = 'assistant'",
        [gone],
    ).fetchone()
    assert (stored["status"], stored["charged"]) == ("partial", 1)
    assert audit(owner) == []


def test_replay_of_a_failed_request_repeats_the_failure_for_free(make_app, owner, member):
    app = make_app(AGENT=FailingAgent)
    user, _ = member(balance=1)
    headers = {**bearer(create_key(owner, user)), "Idempotency-Key": "doomed"}
    assert ask(app.test_client(), headers=headers).status_code == 502
    again = ask(app.test_client(), headers=headers)
    assert again.status_code == 502 and again.json["replayed"] is True
    assert ledger_kinds(owner, user) == ["admin_adjustment", "reserve", "release"]


def test_requests_without_a_key_are_each_charged(app, owner, member):
    user, _ = member(balance=5)
    client, headers = app.test_client(), bearer(create_key(owner, user))
    ask(client, headers=headers)
    ask(client, headers=headers)
    assert balance_of(owner, user) == 3


# -- rate limit ----------------------------------------------------------------------------
def test_rate_limit_is_429_before_any_charge(make_app, owner, member):
    app = make_app(RATELIMIT_ENABLED=True, AGENT_RATE_LIMIT="2 per minute")
    user, _ = member(balance=5)
    other, _ = member(balance=5)
    client = app.test_client()
    headers = bearer(create_key(owner, user))
    statuses = [ask(client, headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert balance_of(owner, user) == 3
    assert ledger_kinds(owner, user).count("reserve") == 2
    # the limit is per user, not per address: another account from the same client still runs
    assert ask(client, headers=bearer(create_key(owner, other))).status_code == 200


# -- conversations -------------------------------------------------------------------------
def test_someone_elses_conversation_is_404_and_free(app, owner, member):
    alice, _ = member(balance=2)
    bob, bob_email = member(balance=2)
    conversation = ask(app.test_client(), headers=bearer(create_key(owner, alice))).json[
        "conversation_id"
    ]
    bob_client = login(app, bob_email)
    response = ask(bob_client, conversation_id=conversation)
    assert response.status_code == 404 and response.is_json
    assert balance_of(owner, bob) == 2
    assert bob_client.get(f"/?c={conversation}").status_code == 404
    assert bob_client.get(f"/api/conversations/{conversation}").status_code == 404
    assert bob_client.get("/?c=not-a-uuid").status_code == 404


def test_conversation_continues_with_its_history(make_app, owner, member):
    app = make_app(AGENT=RecordingAgent)
    _, email = member(balance=3)
    client = login(app, email)
    first = ask(client, "one").json
    second = ask(client, "two", conversation_id=first["conversation_id"]).json
    seen = json.loads(second["reply"])
    assert seen["history"] == [["user", "one"], ["assistant", first["reply"]]]
    assert second["conversation_id"] == first["conversation_id"]
    page = client.get(f"/?c={first['conversation_id']}")
    assert page.status_code == 200 and b"two" in page.data
    api = client.get(f"/api/conversations/{first['conversation_id']}").json
    assert [m["role"] for m in api["messages"]] == ["user", "assistant", "user", "assistant"]


def test_chat_page_shows_balance_and_buy_call_to_action(app, member):
    _, email = member(balance=0)
    page = login(app, email).get("/").data
    assert b'id="token-balance" data-balance="0"' in page
    assert b"You need more tokens to use the agent" in page
    assert b'href="/billing/buy"' in page
    assert b"chat.js" in page


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (None, {}, "JSON object"),
        ({"message": ""}, {}, "non-empty"),
        ({"message": 5}, {}, "non-empty"),
        ({"message": "hi", "conversation_id": "nope"}, {}, "UUID"),
        ({"message": "hi", "stream": "yes"}, {}, "stream"),
        ({"message": "hi"}, {"Idempotency-Key": "x" * 201}, "Idempotency-Key"),
    ],
)
def test_bad_requests_are_400_and_free(app, owner, member, body, headers, message):
    user, _ = member(balance=1)
    response = app.test_client().post(
        "/api/agent", json=body, headers={**bearer(create_key(owner, user)), **headers}
    )
    assert response.status_code == 400
    assert message in response.json["error"]
    assert balance_of(owner, user) == 1


@pytest.mark.parametrize(("limit", "length"), [(None, 20001), (100, 101)])
def test_a_message_over_the_limit_is_413_and_free(make_app, owner, member, limit, length):
    app = make_app(**({"AGENT_MAX_MESSAGE_CHARS": limit} if limit else {}))
    user, _ = member(balance=1)
    response = ask(app.test_client(), "x" * length, headers=bearer(create_key(owner, user)))
    assert response.status_code == 413 and response.is_json
    assert f"at most {length - 1} characters" in response.json["error"]
    assert balance_of(owner, user) == 1 and message_count(owner, user) == 0


# -- agent selection -----------------------------------------------------------------------
def test_offline_agent_is_the_default():
    assert isinstance(build_agent({"LLM_MODEL": ""}), OfflineAgent)


def test_llm_agent_is_built_from_settings_without_network():
    agent = build_agent(
        {"LLM_MODEL": "gpt-test", "LLM_BASE_URL": "http://127.0.0.1:9/v1", "LLM_API_KEY": "k"}
    )
    assert isinstance(agent, LLMAgent)
    import httpx2

    model = agent.model(httpx2.AsyncClient())  # type: ignore[operator]
    assert model.model_name == "gpt-test"
    assert model.base_url.startswith("http://127.0.0.1:9/v1")


def test_llm_agent_streams_through_the_endpoint(make_app, owner, member):
    from pydantic_ai.models.test import TestModel

    app = make_app(AGENT=LLMAgent(TestModel(custom_output_text="Paris is the capital.")))
    user, _ = member(balance=1)
    response = ask(app.test_client(), headers=bearer(create_key(owner, user)), stream=True)
    lines = ndjson(response.data)
    assert "".join(line.get("delta", "") for line in lines) == "Paris is the capital."
    assert lines[-1]["done"] is True and lines[-1]["agent"] == "llm"

"""Metering that cannot be gamed, through the real app and a real streaming model over HTTP.

The app's LLMAgent talks to tests/support/model_stub.py (an OpenAI-compatible server), so
every test runs the whole path: pydantic-ai, the openai SDK, httpx, our metered generator,
PostgreSQL's reserve → record delivery → settle. The adversary is a user who reads part of an
answer and hangs up, or waits for a slow answer to time out, hoping to keep the token.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import audit, balance_of
from tests.support.agents import (
    bearer,
    create_key,
    ledger_kinds,
    make_overdue,
    ndjson,
    open_holds,
    stream_call,
)
from tests.support.model_stub import ModelStub
from tests.support.servers import serve


def hold_of(owner, user, request_id=None):
    return owner.execute(
        "select status, charged, delivered_parts, outcome from api.agent_holds"
        " where user_id = %s and (%s::text is null or request_id = %s)",
        [user, request_id, request_id],
    ).fetchone()


def assistant_row(owner, user):
    return owner.execute(
        "select status, content, charged from api.messages"
        " where user_id = %s and role = 'assistant'",
        [user],
    ).fetchone()


@pytest.fixture
def stub():
    with ModelStub(parts=20, delay=0.01) as server:
        yield server


@pytest.mark.parametrize("read_parts", [1, 7, 19])
def test_disconnect_after_n_parts_is_charged(make_app, owner, make_user, stub, read_parts):
    app = make_app(**stub.app_config())
    user = make_user(balance=3)
    response, lines = stream_call(app.test_client(), bearer(create_key(owner, user)))
    assert json.loads(next(lines))["price"] == 1
    received = [json.loads(next(lines))["delta"] for _ in range(read_parts)]
    response.close()  # the client resets the connection with most of the answer in hand
    assert balance_of(owner, user) == 2
    assert ledger_kinds(owner, user)[-1] == "reserve"
    hold = hold_of(owner, user)
    assert (hold["status"], hold["charged"], hold["delivered_parts"]) == ("settled", 1, read_parts)
    assert hold["outcome"] == "disconnected (partial)"
    stored = assistant_row(owner, user)
    assert (stored["status"], stored["content"]) == ("partial", "".join(received))
    assert audit(owner) == []


def test_timeout_after_n_parts_is_charged_and_marked_partial(make_app, owner, make_user):
    with ModelStub(parts=20, stall_after=4) as slow:
        app = make_app(**slow.app_config(AGENT_TIMEOUT_SECONDS=1.0))
        user = make_user(balance=2)
        headers = bearer(create_key(owner, user))
        response = app.test_client().post(
            "/api/agent", json={"message": "slow one", "stream": True}, headers=headers
        )
        lines = ndjson(response.data)
    deltas = [line["delta"] for line in lines if "delta" in line]
    assert deltas == ["part 1 ", "part 2 ", "part 3 ", "part 4 "]
    assert lines[-1] == {"balance": 1, "cost": 1, "partial": True, "warning": lines[-1]["warning"]}
    assert "charged for the part delivered" in lines[-1]["warning"]
    stored = assistant_row(owner, user)
    assert (stored["status"], stored["content"], stored["charged"]) == (
        "partial",
        "".join(deltas),
        1,
    )
    assert hold_of(owner, user)["outcome"] == "timeout (partial)"
    assert audit(owner) == []


def test_json_timeout_after_n_parts_answers_the_partial_reply(make_app, owner, make_user):
    with ModelStub(parts=20, stall_after=3) as slow:
        app = make_app(**slow.app_config(AGENT_TIMEOUT_SECONDS=1.0))
        user = make_user(balance=2)
        response = app.test_client().post(
            "/api/agent", json={"message": "slow one"}, headers=bearer(create_key(owner, user))
        )
    assert response.status_code == 200
    body = response.json
    assert (body["reply"], body["partial"], body["cost"], body["balance"]) == (
        "part 1 part 2 part 3 ",
        True,
        1,
        1,
    )


@pytest.mark.parametrize("stream", [True, False])
def test_failure_before_the_first_part_is_released(make_app, owner, make_user, stream):
    with ModelStub(fail_status=400) as broken:  # a 4xx is not retried by the SDK
        app = make_app(**broken.app_config())
        user = make_user(balance=1)
        response = app.test_client().post(
            "/api/agent",
            json={"message": "hello", "stream": stream},
            headers=bearer(create_key(owner, user)),
        )
    last = ndjson(response.data)[-1] if stream else response.json
    assert (last["balance"], last["cost"]) == (1, 0) and "returned" in last["error"]
    assert response.status_code == (200 if stream else 502)  # stream headers went out first
    assert ledger_kinds(owner, user)[-2:] == ["reserve", "release"]
    assert assistant_row(owner, user)["status"] == "failed"
    assert open_holds(owner, user) == 0


def test_a_failing_provider_is_called_once_not_retried(make_app, owner, make_user):
    """Each retry of a paid model call may cost us again while the buyer pays one price: the
    SDK's default retries on 5xx/429 would triple what a failing call costs. One call, released."""
    with ModelStub(fail_status=500) as broken:
        app = make_app(**broken.app_config())
        user = make_user(balance=1)
        response = app.test_client().post(
            "/api/agent", json={"message": "hello"}, headers=bearer(create_key(owner, user))
        )
        calls = len(broken.bodies)
    assert response.status_code == 502
    assert calls == 1
    assert ledger_kinds(owner, user)[-2:] == ["reserve", "release"]


def test_a_computed_json_reply_is_charged_even_if_the_client_left(make_app, owner, make_user):
    """The adversary sends a JSON request and hangs up at once, hoping nothing is charged; the
    reply is computed anyway (the model was paid), charged, and theirs by replaying the key."""
    with ModelStub(parts=5, delay=0.05) as slow:
        app = make_app(**slow.app_config())
        user = make_user(balance=2)
        secret = create_key(owner, user)
        body = json.dumps({"message": "answer me later"}).encode()
        with serve(app) as base:
            host, port = base.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(
                    b"POST /api/agent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Authorization: Bearer {secret}\r\nIdempotency-Key: hang-up\r\n".encode()
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            # gone before any answer; the worker finishes and settles on its own
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                hold = hold_of(owner, user)
                if hold and hold["status"] != "held":
                    break
                time.sleep(0.05)
    assert hold_of(owner, user)["status"] == "settled" and balance_of(owner, user) == 1
    replay = app.test_client().post(
        "/api/agent",
        json={"message": "answer me later"},
        headers={**bearer(secret), "Idempotency-Key": "hang-up"},
    )
    assert replay.json["reply"] == slow.reply() and replay.json["replayed"] is True
    assert balance_of(owner, user) == 1


def test_a_finished_stream_is_charged_once_and_replays_free(make_app, owner, make_user, stub):
    app = make_app(**stub.app_config())
    user = make_user(balance=2)
    headers = bearer(create_key(owner, user))
    client = app.test_client()
    first = ndjson(
        client.post(
            "/api/agent",
            json={"message": "whole", "stream": True},
            headers={**headers, "Idempotency-Key": "whole-1"},
        ).data
    )
    assert "".join(line.get("delta", "") for line in first) == stub.reply()
    assert first[-1]["done"] is True and first[-1]["cost"] == 1
    again = client.post(
        "/api/agent", json={"message": "whole"}, headers={**headers, "Idempotency-Key": "whole-1"}
    )
    assert again.json["reply"] == stub.reply() and again.json["replayed"] is True
    assert balance_of(owner, user) == 1


def test_64_concurrent_streams_with_random_disconnects_on_50_tokens(
    make_app, owner, make_user, stub
):
    app = make_app(**stub.app_config(DATABASE_POOL_MAX=20))
    user = make_user(balance=50)
    headers = bearer(create_key(owner, user))
    barrier = threading.Barrier(64)
    rng = random.Random(64)
    plans = [rng.choice([0, 0, 1, 3, 10, 25]) for _ in range(64)]  # 25: read to the end

    def call(i: int) -> tuple[str, int, int]:
        key = f"burst-{i}-{uuid.uuid4().hex[:6]}"
        client = app.test_client()
        barrier.wait()
        response, lines = stream_call(client, headers, f"question {i}", key=key)
        if response.status_code == 402:
            return key, 402, 0
        next(lines)  # the header line
        received = 0
        for raw in lines if plans[i] else ():
            line = json.loads(raw)
            if "delta" in line:
                received += 1
            if received >= plans[i] and plans[i] < 25:
                break
        response.close()
        return key, response.status_code, received

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(call, range(64)))

    holds = {
        r["request_id"]: r
        for r in owner.execute(
            "select request_id, status, charged from api.agent_holds where user_id = %s", [user]
        ).fetchall()
    }
    charged = sum(h["charged"] for h in holds.values())
    assert open_holds(owner, user) == 0  # every call settled, none left to expiry
    assert balance_of(owner, user) == 50 - charged
    assert audit(owner) == []
    for key, status, received in results:
        if status == 402:
            assert key not in holds
        else:  # charged exactly when the client got part of an answer
            assert holds[key]["charged"] == (1 if received else 0), (key, received)
    assert any(r[2] == 0 and r[1] == 200 for r in results)  # some left before any part
    assert sum(1 for r in results if r[2]) == charged > 0
    # and after any hold's expiry there is still nothing to settle
    make_overdue(owner, user)
    assert owner.execute("select api.expire_agent_holds() as n").fetchone()["n"] == 0


def test_history_stays_within_its_budget_and_max_tokens_is_always_sent(
    make_app, owner, make_user, stub
):
    """A stub recording request sizes: 12 long exchanges never make a call send more than
    AGENT_HISTORY_CHARS of history, the newest exchanges are the ones kept, and every model
    call carries max_tokens."""
    budget, max_tokens = 3000, 77
    app = make_app(**stub.app_config(AGENT_HISTORY_CHARS=budget, AGENT_MAX_TOKENS=max_tokens))
    user = make_user(balance=20)
    headers = bearer(create_key(owner, user))
    client = app.test_client()
    conversation = None
    for i in range(12):
        message = f"message {i:02d} " + "x" * 900
        body = {"message": message, "conversation_id": conversation}
        response = client.post("/api/agent", json=body, headers=headers)
        assert response.status_code == 200, response.json
        conversation = response.json["conversation_id"]

    bodies = stub.bodies
    assert len(bodies) == 12
    sent_history = []
    for i, body in enumerate(bodies):
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        assert limit == max_tokens, body.keys()
        turns = [m for m in body["messages"] if m["role"] in ("user", "assistant")]
        assert turns[-1]["content"].startswith(f"message {i:02d}")
        history = turns[:-1]
        size = sum(len(m["content"]) for m in history)
        assert size <= budget
        sent_history.append(history)
    # the budget holds ~3 exchanges of ~1050 characters: the newest are kept, whole
    last = sent_history[-1]
    assert [m["role"] for m in last] == ["user", "assistant"] * (len(last) // 2)
    assert len(last) >= 4 and last[-2]["content"].startswith("message 10")


def test_prices_are_shown_on_the_chat_page_and_in_bodies(make_app, owner, make_user, stub):
    from tests.support.agents import login, password_hash

    owner.execute(
        "insert into tokenbill.prices (agent, per_call, per_1k_output, max_per_call)"
        " values ('stub-model', 1, 1000, 4)"
    )
    try:
        app = make_app(**stub.app_config())
        email = f"price-{uuid.uuid4().hex[:8]}@example.test"
        user = make_user(balance=3, email=email, password_hash=password_hash())
        page = login(app, email).get("/").data.decode()
        assert "at most 4 tokens" in page
        poor = app.test_client().post(
            "/api/agent", json={"message": "hi"}, headers=bearer(create_key(owner, user))
        )
        assert poor.status_code == 402 and poor.json["price"] == 4  # 3 tokens < the most, 4
        owner.execute(
            "select api.admin_adjust(%s, %s, 5, 'more')",
            [
                owner.execute("select id from api.accounts where is_admin limit 1").fetchone()[
                    "id"
                ],
                user,
            ],
        )
        paid = app.test_client().post(
            "/api/agent", json={"message": "hi"}, headers=bearer(create_key(owner, user))
        )
        # 20 parts of "part N " = 147 characters → 37 model tokens → 37 tokens, capped at 4
        assert (paid.json["price"], paid.json["cost"], paid.json["balance"]) == (4, 4, 4)
    finally:
        owner.execute("delete from tokenbill.prices where agent = 'stub-model'")

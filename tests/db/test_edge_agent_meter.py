"""db/edge-functions/agent-meter under the real Deno: a Supabase-hosted agent paying in tokens.

The function must meter exactly like POST /api/agent (tests/webapp/test_agent.py): one charge
per request id, nothing charged without tokens or without a valid key, and the tokens back
whenever the agent fails or times out. The agent's provider is reached over real sockets: a
closed port (down) or a listener that never answers (hung).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from psycopg.conninfo import make_conninfo

from tests.conftest import audit, balance_of
from tests.support.agents import create_key, ledger_kinds
from tests.support.edge_functions import Served, postgres_url, serve_function

FUNCTION = "agent-meter"


def settings(database_url: str, **overrides: str) -> dict[str, str]:
    return {"TOKENBILL_DATABASE_URL": postgres_url(database_url), **overrides}


@pytest.fixture(scope="module")
def meter(database_url: str) -> Iterator[Served]:
    with serve_function(FUNCTION, **settings(database_url)) as served:
        yield served


@pytest.fixture(autouse=True)
def ledger_stays_consistent(owner) -> Iterator[None]:
    yield
    assert audit(owner) == []


@pytest.fixture
def funded(owner, make_user) -> tuple[uuid.UUID, str]:
    """A user holding 5 tokens and one API key: (user id, key secret)."""
    user = make_user(balance=5)
    return user, create_key(owner, user)


def call(
    served: Served, key: str | None, body: Any, request_id: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if request_id:
        headers["Idempotency-Key"] = request_id
    return requests.post(served.url, json=body, headers=headers, timeout=30)


def assistant_status(owner, user: uuid.UUID, request_id: str) -> str | None:
    row = owner.execute(
        "select status from api.messages where user_id = %s and request_id = %s"
        " and role = 'assistant'",
        [user, request_id],
    ).fetchone()
    return row["status"] if row else None


def test_a_call_is_charged_once_and_answered(meter, owner, funded):
    user, key = funded

    first = call(meter, key, {"message": "hello"}, "req-1")
    again = call(meter, key, {"message": "hello"}, "req-1")

    assert first.status_code == 200
    assert first.json()["reply"] == "You said: hello" and first.json()["balance"] == 4
    assert again.status_code == 200
    assert again.json()["replayed"] is True and again.json()["reply"] == "You said: hello"
    assert balance_of(owner, user) == 4
    assert ledger_kinds(owner, user) == ["admin_adjustment", "consumption"]
    assert assistant_status(owner, user, "req-1") == "done"


def test_concurrent_retries_of_one_request_are_charged_once(meter, owner, funded):
    user, key = funded
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(
            pool.map(lambda _: call(meter, key, {"message": "once"}, "req-race"), range(6))
        )

    assert {r.status_code for r in responses} <= {200, 409}  # 409: first call still running
    assert sum(not r.json().get("replayed") for r in responses) == 1
    assert balance_of(owner, user) == 4
    assert ledger_kinds(owner, user) == ["admin_adjustment", "consumption"]


def test_a_conversation_continues_and_other_peoples_are_not_found(meter, owner, funded, make_user):
    user, key = funded
    conversation = call(meter, key, {"message": "one"}).json()["conversation_id"]

    follow_up = call(meter, key, {"message": "two", "conversation_id": conversation})
    stranger = create_key(owner, make_user(balance=5))
    intruder = call(meter, stranger, {"message": "hi", "conversation_id": conversation})

    assert follow_up.json()["conversation_id"] == conversation
    assert intruder.status_code == 404
    assert balance_of(owner, user) == 3


def test_without_tokens_nothing_is_charged_or_stored(meter, owner, make_user):
    user = make_user()
    response = call(meter, create_key(owner, user), {"message": "hi"}, "req-broke")
    assert response.status_code == 402 and response.json()["balance"] == 0
    assert assistant_status(owner, user, "req-broke") is None
    assert ledger_kinds(owner, user) == []


@pytest.mark.parametrize("key", [None, "tb_not_a_key", "Basic abc"])
def test_no_valid_key_no_service(meter, owner, funded, key):
    user, _ = funded
    assert call(meter, key, {"message": "hi"}).status_code == 401
    assert balance_of(owner, user) == 5


def test_a_revoked_key_is_refused(meter, owner, funded):
    user, key = funded
    owner.execute("update tokenbill.api_keys set revoked_at = now() where user_id = %s", [user])
    assert call(meter, key, {"message": "hi"}).status_code == 401
    assert balance_of(owner, user) == 5


@pytest.mark.parametrize(
    "body",
    [["hi"], {"message": ""}, {"message": "x" * 20001}, {"message": "hi", "conversation_id": "7"}],
)
def test_malformed_calls_are_400_and_free(meter, owner, funded, body):
    user, key = funded
    assert call(meter, key, body).status_code == 400
    assert balance_of(owner, user) == 5


def test_bad_idempotency_key_is_400(meter, funded):
    _, key = funded
    assert call(meter, key, {"message": "hi"}, "has space").status_code == 400


@pytest.fixture
def hung_provider() -> Iterator[str]:
    """A listener that accepts connections (in the kernel) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_provider_down_gives_the_token_back(database_url, owner, funded):
    user, key = funded
    down = settings(database_url, LLM_BASE_URL="http://127.0.0.1:1/v1")
    with serve_function(FUNCTION, **down) as fn:
        response = call(fn, key, {"message": "hi"}, "req-down")
    assert response.status_code == 502 and response.json()["balance"] == 5
    assert assistant_status(owner, user, "req-down") == "failed"
    assert ledger_kinds(owner, user) == ["admin_adjustment", "consumption", "consumption_refund"]


def test_provider_timeout_gives_the_token_back(database_url, owner, funded, hung_provider):
    user, key = funded
    hung = settings(database_url, LLM_BASE_URL=hung_provider, AGENT_TIMEOUT_SECONDS="1")
    with serve_function(FUNCTION, **hung) as fn:
        response = call(fn, key, {"message": "hi"}, "req-hung")
        replay = call(fn, key, {"message": "hi"}, "req-hung")
    assert response.status_code == 504 and response.json()["balance"] == 5
    assert replay.status_code == 504 and replay.json()["replayed"] is True
    assert assistant_status(owner, user, "req-hung") == "timeout"
    assert balance_of(owner, user) == 5


def test_database_unreachable_is_503_and_charges_nothing(database_url, owner, funded):
    user, key = funded
    dead = postgres_url(make_conninfo(database_url, port=1))
    with serve_function(FUNCTION, TOKENBILL_DATABASE_URL=dead) as fn:
        assert call(fn, key, {"message": "hi"}).status_code == 503
    assert balance_of(owner, user) == 5

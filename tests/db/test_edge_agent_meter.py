"""db/edge-functions/agent-meter under the real Deno: a Supabase-hosted agent paying in tokens.

The function must meter exactly like POST /api/agent (tests/webapp/test_agent.py): a reserve,
then one settle (charged) or release per request id; nothing charged without tokens, without a
valid key, or for a key reused with another body; the reservation released whenever the agent
fails or times out before replying; a computed reply charged even when the caller has gone.
The agent's provider is reached over real sockets: an OpenAI-compatible stub that answers
(optionally late), a closed port (down) or a listener that never answers (hung).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from psycopg.conninfo import make_conninfo

from tests.conftest import balance_of
from tests.support.agents import create_key, ledger_kinds, make_overdue, open_holds
from tests.support.edge_functions import Served, postgres_url, serve_function
from tests.support.polling import wait_for
from webapp.agent import request_hash

pytestmark = pytest.mark.usefixtures("ledger_stays_consistent")


FUNCTION = "agent-meter"


CHARGED = ["admin_adjustment", "reserve"]  # charged all it reserved: no settle row (0021)
RELEASED = ["admin_adjustment", "reserve", "release"]


def settings(database_url: str, **overrides: str) -> dict[str, str]:
    return {"TOKENBILL_DATABASE_URL": postgres_url(database_url), **overrides}


@pytest.fixture(scope="module")
def meter(database_url: str) -> Iterator[Served]:
    with serve_function(FUNCTION, **settings(database_url)) as served:
        yield served


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


class CompletionStub:
    """An OpenAI-compatible chat-completions server (non-streamed, what agent.ts asks for):
    answers ``reply`` after ``delay`` seconds, or ``status`` with an error body."""

    def __init__(self, reply: str = "stub reply", delay: float = 0.0, status: int = 200) -> None:
        self.reply, self.delay, self.status = reply, delay, status
        self.answered = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(stub.delay)
                body = (
                    {
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": stub.reply}}
                        ]
                    }
                    if stub.status == 200
                    else {"error": {"message": "stub failure"}}
                )
                payload = json.dumps(body).encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                stub.answered.set()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))

    def settings(self, model: str = "stub-model") -> dict[str, str]:
        host, port = self._server.server_address[:2]
        return {"LLM_BASE_URL": f"http://{host}:{port}/v1", "LLM_MODEL": model}

    def __enter__(self) -> CompletionStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def test_a_call_is_charged_once_and_answered(meter, owner, funded):
    user, key = funded

    first = call(meter, key, {"message": "hello"}, "req-1")
    again = call(meter, key, {"message": "hello"}, "req-1")

    assert first.status_code == 200
    assert first.json() == {
        "request_id": "req-1",
        "conversation_id": first.json()["conversation_id"],
        "reply": "You said: hello",
        "price": 1,
        "cost": 1,
        "balance": 4,
        "agent": "echo",
    }
    assert again.status_code == 200
    assert again.json()["replayed"] is True and again.json()["reply"] == "You said: hello"
    assert again.json()["cost"] == 1
    assert balance_of(owner, user) == 4
    assert ledger_kinds(owner, user) == CHARGED
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
    assert ledger_kinds(owner, user) == CHARGED


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
    assert response.status_code == 402
    assert response.json()["balance"] == 0 and response.json()["price"] == 1
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
    ("body", "status"),
    [
        (["hi"], 400),
        ({"message": ""}, 400),
        ({"message": "hi", "conversation_id": "7"}, 400),
        ({"message": "hi\u0000there"}, 400),  # PostgreSQL text cannot hold NUL: 22021, a 400
        ({"message": "x" * 20001}, 413),
        ({"message": "\U0001f600" * 20001}, 413),  # characters, not UTF-16 units, as in SQL
    ],
)
def test_malformed_calls_are_refused_and_free(meter, owner, funded, body, status):
    user, key = funded
    assert call(meter, key, body).status_code == status
    assert balance_of(owner, user) == 5
    assert ledger_kinds(owner, user) == ["admin_adjustment"]


def test_the_longest_message_in_characters_is_accepted(meter, owner, funded):
    user, key = funded
    assert call(meter, key, {"message": "\U0001f600" * 20000}).status_code == 200
    assert balance_of(owner, user) == 4


def test_a_key_reused_with_another_body_is_422_and_charges_nothing(meter, owner, funded):
    user, key = funded
    first = call(meter, key, {"message": "hello"}, "req-reused")
    conversation = first.json()["conversation_id"]

    other_message = call(meter, key, {"message": "something else"}, "req-reused")
    other_conversation = call(
        meter, key, {"message": "hello", "conversation_id": conversation}, "req-reused"
    )

    assert first.status_code == 200
    for response in (other_message, other_conversation):
        assert response.status_code == 422 and "different request body" in response.json()["error"]
        assert response.json()["balance"] == 4
    assert balance_of(owner, user) == 4
    assert ledger_kinds(owner, user) == CHARGED
    assert owner.execute(
        "select content from api.messages where user_id = %s and request_id = 'req-reused'"
        " and role = 'user'",
        [user],
    ).fetchone() == {"content": "hello"}


@pytest.mark.parametrize("conversation", [False, True])
def test_the_key_is_bound_to_the_same_hash_as_the_web_app(meter, owner, funded, conversation):
    """One hash for both entry points: a key first seen by one is bound to the same content
    in the other (non-ASCII and an upper-case UUID included)."""
    user, key = funded
    message = 'héllo \u2603 \U0001f600 "quoted"\n\ttab'
    conversation_id = None
    if conversation:
        conversation_id = uuid.UUID(
            call(meter, key, {"message": "start"}).json()["conversation_id"]
        )
    body: dict[str, Any] = {"message": message}
    if conversation_id:
        body["conversation_id"] = str(conversation_id).upper()

    assert call(meter, key, body, "req-hash").status_code == 200

    stored = owner.execute(
        "select request_hash from tokenbill.exchanges where user_id = %s"
        " and request_id = 'req-hash'",
        [user],
    ).fetchone()["request_hash"]
    assert stored == request_hash(message, conversation_id)


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


def test_provider_down_releases_the_reservation(database_url, owner, funded):
    """A failure before any reply: nothing delivered, nothing charged."""
    user, key = funded
    down = settings(database_url, LLM_BASE_URL="http://127.0.0.1:1/v1")
    with serve_function(FUNCTION, **down) as fn:
        response = call(fn, key, {"message": "hi"}, "req-down")
    assert response.status_code == 502
    assert response.json()["balance"] == 5 and response.json()["cost"] == 0
    assert assistant_status(owner, user, "req-down") == "failed"
    assert ledger_kinds(owner, user) == RELEASED
    assert open_holds(owner, user) == 0


def test_provider_error_status_releases_the_reservation(database_url, owner, funded):
    user, key = funded
    provider = CompletionStub(status=500)
    with provider, serve_function(FUNCTION, **settings(database_url, **provider.settings())) as fn:
        response = call(fn, key, {"message": "hi"}, "req-500")
    assert response.status_code == 502 and response.json()["balance"] == 5
    assert ledger_kinds(owner, user) == RELEASED


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
    assert ledger_kinds(owner, user) == RELEASED


def test_database_unreachable_is_503_and_charges_nothing(database_url, owner, funded):
    user, key = funded
    dead = postgres_url(make_conninfo(database_url, port=1))
    with serve_function(FUNCTION, TOKENBILL_DATABASE_URL=dead) as fn:
        assert call(fn, key, {"message": "hi"}).status_code == 503
    assert balance_of(owner, user) == 5


def test_a_computed_reply_is_charged_even_when_the_caller_left(database_url, owner, funded):
    """Non-streamed: once the reply is computed it is stored and charged; the caller who hung
    up gets it by replaying the key (docs/agent.md: 'JSON: the client is gone')."""
    user, key = funded
    provider = CompletionStub(reply="late but complete", delay=1.5)
    with provider, serve_function(FUNCTION, **settings(database_url, **provider.settings())) as fn:
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(
                fn.url,
                json={"message": "hi"},
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "req-gone"},
                timeout=(5, 0.5),
            )
        assert wait_for(lambda: assistant_status(owner, user, "req-gone") == "done", 15.0), (
            "timed out waiting"
        )
        replay = call(fn, key, {"message": "hi"}, "req-gone")

    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert replay.json()["reply"] == "late but complete"
    assert balance_of(owner, user) == 4
    assert ledger_kinds(owner, user) == CHARGED


def test_the_price_is_the_databases_for_the_model(database_url, owner, make_user):
    """The model's row of tokenbill.prices: reserved whole, charged by what was used."""
    model = f"edge-model-{uuid.uuid4().hex[:8]}"
    owner.execute(
        "insert into tokenbill.prices (agent, per_call, per_1k_output, max_per_call)"
        " values (%s, 2, 1000, 4)",
        [model],
    )
    rich, poor = make_user(balance=10), make_user(balance=3)
    try:
        with CompletionStub(reply="abcd") as provider:  # 4 characters = 1 output token
            env = settings(database_url, **provider.settings(model))
            with serve_function(FUNCTION, **env) as fn:
                paid = call(fn, create_key(owner, rich), {"message": "hi"})
                refused = call(fn, create_key(owner, poor), {"message": "hi"})
    finally:
        owner.execute("delete from tokenbill.prices where agent = %s", [model])

    assert paid.status_code == 200
    assert paid.json()["price"] == 4 and paid.json()["cost"] == 3 and paid.json()["agent"] == model
    assert balance_of(owner, rich) == 7
    assert refused.status_code == 402 and refused.json()["price"] == 4
    assert balance_of(owner, poor) == 3 and ledger_kinds(owner, poor) == ["admin_adjustment"]


def test_a_new_instance_settles_holds_a_dead_one_left(database_url, owner, funded, make_user):
    """A killed instance's hold (nothing delivered) is released by the next instance's sweep,
    whoever calls: the user who left it may never come back."""
    user, key = funded
    provider = CompletionStub(delay=30)
    with (
        provider,
        serve_function(FUNCTION, **settings(database_url, **provider.settings())) as dying,
        pytest.raises(requests.exceptions.ReadTimeout),
    ):
        requests.post(
            dying.url,
            json={"message": "hi"},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "req-killed"},
            timeout=(5, 1),
        )
    assert open_holds(owner, user) == 1  # the instance stopped mid-call
    make_overdue(owner, user, "req-killed")

    other = make_user(balance=1)
    with serve_function(FUNCTION, **settings(database_url)) as fresh:
        assert call(fresh, create_key(owner, other), {"message": "hi"}).status_code == 200

    assert open_holds(owner, user) == 0
    assert assistant_status(owner, user, "req-killed") == "timeout"
    assert balance_of(owner, user) == 5
    assert ledger_kinds(owner, user) == RELEASED

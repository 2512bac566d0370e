"""Body size limits (judged from Content-Length before reading) and over-deep input."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import WEBHOOK_SECRET, balance_of
from tests.support import stripe_events as ev
from tests.support.agents import login, password_hash

WEBHOOK = "/api/webhook/stripe"
MIB = 1024 * 1024


class Unread:
    """A body that must never be read: the size check has to refuse it from the header."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        chunk = min(self.size - self.read_bytes, 65536 if n is None or n < 0 else n)
        self.read_bytes += chunk
        return b"a" * chunk


def signed_in(app, make_user, name: str, balance: int = 0):
    """A logged-in client of a new account (for the agent endpoint) and the account's id."""
    email = f"{id(app)}-{name}@example.test"
    user = make_user(email=email, password_hash=password_hash(), balance=balance)
    return login(app, email), user


def post_declared(client, path: str, size: int, **headers: Any):
    body = Unread(size)
    environ = {"wsgi.input": body, "CONTENT_LENGTH": str(size)}
    response = client.post(path, environ_overrides=environ, headers=headers)
    return response, body


def test_huge_webhook_body_is_413_json_without_reading_it(client):
    response, body = post_declared(
        client,
        WEBHOOK,
        300 * MIB,
        **{"Stripe-Signature": "t=1,v1=x", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "error" in response.get_json()
    assert body.read_bytes == 0


def test_huge_login_body_is_413_without_reading_it(client):
    response, body = post_declared(
        client, "/auth/login", 300 * MIB, **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413
    assert response.get_json()["error"]
    assert body.read_bytes == 0


def test_webhook_accepts_a_real_event_up_to_its_larger_limit(client, make_user, owner):
    user = make_user()
    evt = ev.payment_intent_succeeded(user, "tokens_100", 500)
    evt["data"]["object"]["description"] = "x" * (300 * 1024)  # over the app limit, under 512 KB
    body, header = ev.signed(evt, WEBHOOK_SECRET)
    response = client.post(WEBHOOK, data=body, headers={"Stripe-Signature": header})
    assert response.status_code == 200, response.data
    assert response.get_json()["outcome"] == "processed"


def test_pages_refuse_bodies_over_the_app_limit(client):
    response = client.post("/auth/login", data={"email": "a@b.c", "password": "x" * (200 * 1024)})
    assert response.status_code == 413


def test_deeply_nested_signed_webhook_is_400_not_500(client):
    body = ("[" * 100_000 + "]" * 100_000).encode()
    header = ev.sign(body, WEBHOOK_SECRET)
    response = client.post(WEBHOOK, data=body, headers={"Stripe-Signature": header})
    assert response.status_code == 400


def test_deeply_nested_agent_json_is_400_not_500(app, make_user):
    client, _ = signed_in(app, make_user, "nested-agent")
    body = '{"message": ' + "[" * 50_000 + "]" * 50_000 + "}"
    response = client.post(
        "/api/agent",
        data=body,
        headers={"Content-Type": "application/json", "Idempotency-Key": "nested-1"},
    )
    assert response.status_code == 400
    assert json.loads(response.data)["error"]


def test_a_nul_in_the_login_form_is_400_not_500(client):
    """PostgreSQL text cannot hold NUL: the driver refused the e-mail inside the view (500)."""
    response = client.post("/auth/login", data={"email": "a\x00@example.test", "password": "x"})
    assert response.status_code == 400
    assert b"NUL" in response.data


def test_a_nul_in_agent_json_is_400_and_charges_nothing(app, make_user, owner):
    client, user = signed_in(app, make_user, "nul-agent", balance=5)
    for body in ({"message": "hi\u0000there"}, {"message": "hi", "conversation_id": "\u0000"}):
        response = client.post("/api/agent", json=body, headers={"Idempotency-Key": "nul-1"})
        assert response.status_code == 400, body
        assert "NUL" in response.get_json()["error"]
    assert balance_of(owner, user) == 5


def test_a_nul_in_a_query_is_400(client):
    assert client.get("/auth/login?next=%00").status_code == 400


def test_a_chat_message_may_still_say_backslash_u_0000(app, make_user):
    """Only the character is refused: the six characters \\u0000 typed in a message are text."""
    client, _ = signed_in(app, make_user, "literal-agent", balance=5)
    response = client.post(
        "/api/agent", json={"message": "what is \\u0000?"}, headers={"Idempotency-Key": "lit-1"}
    )
    assert response.status_code == 200, response.data

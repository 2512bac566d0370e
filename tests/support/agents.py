"""Real agent classes that misbehave on purpose, and helpers to call the agent endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PASSWORD
from webapp.agents import Turn


class FailingAgent:
    """Raises before producing anything, like a provider answering 500."""

    name = "failing"

    async def stream(self, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        raise RuntimeError("the model provider is down")
        yield ""  # pragma: no cover - makes this an async generator


class FailsMidStream:
    """Produces part of an answer, then breaks."""

    name = "fails-mid-stream"

    async def stream(self, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        yield "Half an "
        yield "answer"
        raise ConnectionError("stream cut")


class NeverAnswers:
    """Waits forever (until cancelled by the endpoint's time limit)."""

    name = "never-answers"

    async def stream(self, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""  # pragma: no cover


class RecordingAgent:
    """Answers with what it was given, so tests can see the history it received."""

    name = "recording"

    async def stream(self, history: Sequence[Turn], message: str) -> AsyncIterator[str]:
        yield json.dumps({"history": [[t.role, t.content] for t in history], "message": message})


def begin_request(
    conn: psycopg.Connection,
    user_id: uuid.UUID,
    request_id: str,
    message: str = "hello",
    conversation_id: uuid.UUID | None = None,
    *,
    agent: str = "offline",
    request_hash: str | None = None,
    hold_seconds: int = 600,
) -> dict[str, Any]:
    """api.begin_agent_request as the endpoint calls it (with the endpoint's body hash)."""
    from webapp.agent import request_hash as endpoint_hash

    digest = request_hash or endpoint_hash(message, conversation_id)
    return conn.execute(
        "select * from api.begin_agent_request(%s, %s, %s, %s, %s, %s, %s)",
        [user_id, request_id, conversation_id, message, agent, digest, hold_seconds],
    ).fetchone()


def settle_request(
    conn: psycopg.Connection,
    user_id: uuid.UUID,
    request_id: str,
    outcome: str = "done",
    reply: str = "the answer",
    input_chars: int = 10,
) -> dict[str, Any]:
    """api.settle_agent_request as the endpoint calls it ('boom' as the error unless done)."""
    return conn.execute(
        "select * from api.settle_agent_request(%s, %s, %s, %s, %s, %s)",
        [user_id, request_id, outcome, reply, input_chars, None if outcome == "done" else "boom"],
    ).fetchone()


def make_overdue(
    owner: psycopg.Connection, user_id: uuid.UUID, request_id: str | None = None
) -> None:
    """As if the hold's time ran out (the owner may move expires_at; holds are not the ledger)."""
    owner.execute(
        "update tokenbill.exchanges set expires_at = now() - interval '1 second'"
        " where user_id = %s and hold_status = 'held' and (%s::text is null or request_id = %s)",
        [user_id, request_id, request_id],
    )


def open_holds(conn: psycopg.Connection, user_id: uuid.UUID | None = None) -> int:
    row = conn.execute(
        "select count(*) as n from api.agent_holds where status = 'held'"
        " and (%s::uuid is null or user_id = %s)",
        [user_id, user_id],
    ).fetchone()
    return row["n"] if isinstance(row, dict) else row[0]  # type: ignore[index]


def password_hash() -> str:
    return PasswordHasher().hash(PASSWORD)


def create_key(conn: psycopg.Connection, user_id: uuid.UUID, name: str = "test") -> str:
    """Store a key for the user the way the keys page does; returns the secret."""
    secret = "tb_" + uuid.uuid4().hex + uuid.uuid4().hex
    conn.execute(
        "select api.create_api_key(%s, %s, %s, %s)",
        [user_id, name, secret[:10], hashlib.sha256(secret.encode()).hexdigest()],
    )
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def login(app: Flask, email: str) -> FlaskClient:
    """A client with a session for an existing account (password PASSWORD)."""
    client = app.test_client()
    response = client.post("/auth/login", data={"email": email, "password": PASSWORD})
    assert response.status_code == 303, response.data
    return client


def ndjson(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def ledger_kinds(conn: psycopg.Connection, user_id: uuid.UUID) -> list[str]:
    rows = conn.execute(
        "select kind from api.ledger_entries where user_id = %s order by id", [user_id]
    ).fetchall()
    return [row["kind"] for row in rows]


def ask(client, message="hello", headers=None, **body):  # type: ignore[no-untyped-def]
    """POST a message to the agent endpoint as ``client``."""
    return client.post("/api/agent", json={"message": message, **body}, headers=headers or {})


def stream_call(client, headers, message="tell me a story", key=None, **body):  # type: ignore[no-untyped-def]
    """Start a streamed call unbuffered; returns the response and its line iterator (the
    header line first, then the parts as the endpoint hands them over)."""
    response = client.post(
        "/api/agent",
        json={"message": message, "stream": True, **body},
        headers={**headers, **({"Idempotency-Key": key} if key else {})},
        buffered=False,
    )
    return response, iter(response.response)

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

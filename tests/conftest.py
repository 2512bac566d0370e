"""Shared fixtures: a real PostgreSQL database migrated once per run, real stripe-mock, the app.

Nothing here fakes the database or Stripe's HTTP API. PostgreSQL and stripe-mock are started
by workshop/services/ when DATABASE_ADMIN_URL / STRIPE_MOCK_URL are not given.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.support.recording_proxy import RecordingProxy
from webapp.db import close_app, connect_as
from webapp.ops import migrate

# A developer's .env (scripts/run writes one naming the dev database) must not configure the
# suite's apps, nor the `flask` commands it starts: both skip it, as Flask's CLI does.
os.environ["FLASK_SKIP_DOTENV"] = "1"

WEBHOOK_SECRET = "whsec_test_tokenbill_secret"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def admin_url() -> str:
    """A superuser URL on a server where the tests may create databases."""
    url = os.environ.get("DATABASE_ADMIN_URL")
    if not url:
        from workshop import services

        url = services.ensure_postgres()
    return url


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """A fresh database for this run, with every migration applied."""
    name = f"tokenbill_test_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    url = make_conninfo(admin_url, dbname=name)
    migrate.upgrade(url)
    yield url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture(scope="session")
def stripe_mock_url() -> str:
    url = os.environ.get("STRIPE_MOCK_URL")
    if not url:
        from workshop import services

        url = services.ensure_stripe_mock()
    return url


@pytest.fixture
def owner(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A connection as the database owner (autocommit), for setup and assertions."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def connect_as_app(database_url: str) -> psycopg.Connection[dict[str, Any]]:
    """A connection that acts as tokenbill_app, exactly like the web app's pool."""
    return connect_as(database_url, autocommit=True, row_factory=dict_row)


def connect_owner(database_url: str) -> psycopg.Connection[dict[str, Any]]:
    """An autocommit dict-row connection as the database owner (internal functions)."""
    return psycopg.connect(database_url, autocommit=True, row_factory=dict_row)


def connect_as_role(database_url: str, role: str) -> psycopg.Connection[dict[str, Any]]:
    """An autocommit dict-row connection acting as ``role`` (tokenbill_webhook, ...)."""
    return connect_as(database_url, role, autocommit=True, row_factory=dict_row)


@pytest.fixture
def app_conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with connect_as_app(database_url) as conn:
        yield conn


@pytest.fixture
def admin_conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """Acts as tokenbill_admin, the role admin pages switch to."""
    with connect_as_role(database_url, "tokenbill_admin") as conn:
        yield conn


@pytest.fixture
def webhook_conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """Acts as tokenbill_webhook, the only role that applies Stripe objects."""
    with connect_as_role(database_url, "tokenbill_webhook") as conn:
        yield conn


@pytest.fixture(scope="session")
def admin_id(database_url: str) -> uuid.UUID:
    """An admin account used to fund test users through api.admin_adjust."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        email = f"admin-{uuid.uuid4().hex[:8]}@example.test"
        conn.execute("select api.register_user(%s, 'not-a-real-hash')", [email])
        return conn.execute("select api.set_admin(%s)", [email]).fetchone()[0]  # type: ignore[index]


@pytest.fixture
def make_user(owner: psycopg.Connection, admin_id: uuid.UUID) -> Callable[..., uuid.UUID]:
    """Create a user (unique email) holding ``balance`` tokens; returns its id."""

    def factory(balance: int = 0, email: str | None = None, password_hash: str = "x") -> uuid.UUID:
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.test"
        user_id = owner.execute(
            "select api.register_user(%s, %s) as id", [email, password_hash]
        ).fetchone()["id"]
        if balance:
            owner.execute(
                "select api.admin_adjust(%s, %s, %s, 'test setup')", [admin_id, user_id, balance]
            )
        return user_id

    return factory


def balance_of(conn: psycopg.Connection, user_id: uuid.UUID) -> int:
    row = conn.execute("select balance from api.accounts where id = %s", [user_id]).fetchone()
    return row["balance"] if isinstance(row, dict) else row[0]  # type: ignore[index]


def audit(conn: psycopg.Connection) -> list[Any]:
    return conn.execute("select * from api.ledger_audit()").fetchall()


@pytest.fixture
def app_config(database_url: str, stripe_mock_url: str) -> dict[str, Any]:
    """Test configuration; individual tests may override keys before creating the app."""
    return {
        "TESTING": True,
        "TOKENBILL_ENV": "development",
        "SECRET_KEY": "test-secret-key",
        "DATABASE_URL": database_url,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "STRIPE_SECRET_KEY": "sk_test_tokenbill",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_mock_url,
        "PUBLIC_BASE_URL": "http://localhost",
    }


@pytest.fixture
def make_app(app_config: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """Build apps with config overrides; their pools are closed after the test."""
    from webapp import create_app

    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        app = create_app({**app_config, **overrides})
        apps.append(app)
        return app

    yield factory
    for app in apps:
        close_app(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class AuthActions:
    """Register and log in through the real views, like a browser would."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.email: str | None = None

    def register(self, email: str | None = None, password: str = PASSWORD):
        self.email = email or f"user-{uuid.uuid4().hex[:12]}@example.test"
        return self.client.post("/auth/register", data={"email": self.email, "password": password})

    def login(self, email: str | None = None, password: str = PASSWORD):
        return self.client.post(
            "/auth/login", data={"email": email or self.email, "password": password}
        )

    def logout(self):
        return self.client.post("/auth/logout")

    def user_id(self, conn: psycopg.Connection) -> uuid.UUID:
        row = conn.execute("select id from api.accounts where email = %s", [self.email]).fetchone()
        return row["id"] if isinstance(row, dict) else row[0]  # type: ignore[index]


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def proxy(stripe_mock_url: str) -> Iterator[RecordingProxy]:
    """stripe-mock behind a proxy that records every request the app sends to Stripe."""
    with RecordingProxy(stripe_mock_url) as running:
        yield running


@pytest.fixture
def ledger_stays_consistent(owner: psycopg.Connection) -> Iterator[None]:
    """After the test, every balance still equals its ledger (use with pytestmark)."""
    yield
    assert audit(owner) == []

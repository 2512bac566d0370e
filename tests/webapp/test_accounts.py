"""Account extras: auth rate limits, secure cookie flags, and the create-admin command."""

from __future__ import annotations

import uuid

import pytest
from argon2 import PasswordHasher

from tests.conftest import PASSWORD


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
def test_auth_forms_are_rate_limited(make_app, path):
    app = make_app(RATELIMIT_ENABLED=True, AUTH_RATE_LIMIT="3 per minute")
    client = app.test_client()
    form = {"email": "nobody@example.test", "password": "x"}
    statuses = [client.post(path, data=form).status_code for _ in range(4)]
    assert 429 not in statuses[:3]
    assert statuses[3] == 429
    assert client.get(path).status_code == 200  # only POSTs count


def test_session_cookie_flags_follow_configuration(make_app):
    app = make_app(SESSION_COOKIE_SECURE=True)
    client = app.test_client()
    email = f"secure-{uuid.uuid4().hex[:8]}@example.test"
    response = client.post("/auth/register", data={"email": email, "password": PASSWORD})
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie

    plain = make_app(SESSION_COOKIE_SECURE=False).test_client()
    email = f"plain-{uuid.uuid4().hex[:8]}@example.test"
    response = plain.post("/auth/register", data={"email": email, "password": PASSWORD})
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("session="))
    assert "Secure" not in cookie and "HttpOnly" in cookie


def test_create_admin_creates_the_account_and_makes_it_admin(app, owner):
    email = f"Ops-{uuid.uuid4().hex[:8]}@Example.test"
    result = app.test_cli_runner().invoke(args=["create-admin", email, "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    row = owner.execute(
        "select is_admin, password_hash from tokenbill.users where email = %s", [email.lower()]
    ).fetchone()
    assert row["is_admin"] is True
    assert PasswordHasher().verify(row["password_hash"], PASSWORD)
    response = app.test_client().post("/auth/login", data={"email": email, "password": PASSWORD})
    assert response.status_code == 303


def test_create_admin_promotes_an_existing_account_without_touching_its_password(
    app, owner, make_user
):
    email = f"existing-{uuid.uuid4().hex[:8]}@example.test"
    make_user(email=email, password_hash="kept-hash")
    result = app.test_cli_runner().invoke(args=["create-admin", email])
    assert result.exit_code == 0, result.output
    row = owner.execute(
        "select is_admin, password_hash from tokenbill.users where email = %s", [email]
    ).fetchone()
    assert (row["is_admin"], row["password_hash"]) == (True, "kept-hash")


def test_create_admin_prompts_for_a_password_and_checks_it(app, owner):
    email = f"prompted-{uuid.uuid4().hex[:8]}@example.test"
    runner = app.test_cli_runner()
    short = runner.invoke(args=["create-admin", email], input="short\nshort\n")
    assert short.exit_code != 0 and "at least 8" in short.output
    assert (
        owner.execute("select 1 from tokenbill.users where email = %s", [email]).fetchone() is None
    )
    ok = runner.invoke(args=["create-admin", email], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert ok.exit_code == 0, ok.output
    assert PASSWORD not in ok.output


def test_the_web_role_cannot_make_admins(app_conn):
    import psycopg

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("select api.set_admin('anyone@example.test')")


def test_expire_agent_requests_command(app, owner, app_conn, make_user):
    from tests.support.agents import begin_request, make_overdue

    user = make_user(balance=1)
    begin_request(app_conn, user, "stuck", "hi")
    make_overdue(owner, user)
    result = app.test_cli_runner().invoke(args=["expire-agent-requests"])
    assert result.exit_code == 0 and "Settled 1" in result.output
    balance = owner.execute("select balance from api.accounts where id = %s", [user]).fetchone()
    assert balance["balance"] == 1

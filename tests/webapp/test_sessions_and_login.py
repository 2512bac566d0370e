"""Attacks on sign-in from issue 11: open redirects, guessing, timing, replayed cookies."""

from __future__ import annotations

import uuid

import pytest
from argon2 import PasswordHasher

from tests.conftest import PASSWORD, AuthActions
from webapp import auth as auth_module


@pytest.mark.parametrize(
    "target",
    [
        "/%09/evil.example/path",  # the audit: answered Location: //evil.example/path
        "/%0a/evil.example/",
        "/%5cevil.example/",
        "/\\evil.example/",
        "//evil.example/",
        "https://evil.example/",
        "javascript:alert(1)",
        "/%20/evil.example/",
    ],
)
def test_login_never_redirects_off_site(client, auth, target):
    auth.register()
    auth.logout()
    response = client.post(
        f"/auth/login?next={target}", data={"email": auth.email, "password": PASSWORD}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_login_follows_a_same_site_path_with_its_query(client, auth):
    auth.register()
    auth.logout()
    response = client.post(
        "/auth/login?next=/history/%3Fbefore%3D5", data={"email": auth.email, "password": PASSWORD}
    )
    assert response.headers["Location"] == "/history/?before=5"


def test_logout_ends_the_session_server_side(client, app, auth):
    auth.register()
    stolen = client.get_cookie("session").value  # a copy of the cookie, e.g. from a shared PC
    assert client.get("/history/").status_code == 200
    auth.logout()

    thief = app.test_client()
    thief.set_cookie("session", stolen)
    response = thief.get("/history/")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_password_change_ends_every_other_session(app, auth, client):
    auth.register()
    other = app.test_client()
    AuthActions(other).login(auth.email)
    assert other.get("/history/").status_code == 200

    response = client.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": "a new long password"},
    )
    assert response.status_code == 303
    assert client.get("/history/").status_code == 200  # this session stays
    assert other.get("/history/").status_code == 302  # the other one is gone
    assert AuthActions(app.test_client()).login(auth.email).status_code == 401
    assert (
        AuthActions(app.test_client()).login(auth.email, "a new long password").status_code == 303
    )


def test_password_change_needs_the_current_password(auth, client):
    auth.register()
    response = client.post(
        "/account/password", data={"current_password": "wrong", "new_password": "whatever123"}
    )
    assert response.status_code == 400
    assert AuthActions(client).login(auth.email).status_code == 303


def test_the_cookie_does_not_carry_the_user_id(client, auth, owner):
    auth.register()
    with client.session_transaction() as session:
        stored = session["_user_id"]
    assert stored != str(auth.user_id(owner))


def test_unknown_accounts_cost_one_argon2_verification_like_known_ones(client, auth, monkeypatch):
    """Timing: without the dummy verification an unknown email answered in 4 ms, not 110."""
    auth.register()
    auth.logout()
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            calls.append(str(hash))
            return super().verify(hash, password)

    monkeypatch.setattr(auth_module, "hasher", CountingHasher())
    client.post("/auth/login", data={"email": auth.email, "password": "wrong password"})
    client.post("/auth/login", data={"email": "nobody@example.test", "password": PASSWORD})
    assert len(calls) == 2
    assert all(h.startswith("$argon2id$") for h in calls)


def test_failed_logins_are_limited_per_account_across_addresses(make_app):
    app = make_app(
        RATELIMIT_ENABLED=True,
        AUTH_RATE_LIMIT="1000 per minute",
        LOGIN_ACCOUNT_RATE_LIMIT="3 per minute",
    )
    owner_client = app.test_client()
    actions = AuthActions(owner_client)
    actions.register(email=f"victim-{uuid.uuid4().hex[:8]}@example.test")
    actions.logout()

    codes = []
    for i in range(5):  # a botnet: every attempt from another address
        client = app.test_client()
        response = client.post(
            "/auth/login",
            data={"email": actions.email, "password": f"guess {i}"},
            environ_base={"REMOTE_ADDR": f"198.51.100.{i + 1}"},
        )
        codes.append(response.status_code)
    assert codes == [401, 401, 401, 429, 429]
    other = f"bystander-{uuid.uuid4().hex[:8]}@example.test"
    AuthActions(app.test_client()).register(email=other)
    assert AuthActions(app.test_client()).login(other).status_code == 303  # others unaffected


def test_logins_are_limited_per_address(make_app):
    app = make_app(
        RATELIMIT_ENABLED=True,
        AUTH_RATE_LIMIT="3 per minute",
        LOGIN_ACCOUNT_RATE_LIMIT="100 per minute",
    )
    codes = [
        app.test_client()
        .post(
            "/auth/login",
            data={"email": f"spray-{i}@example.test", "password": "x"},
            environ_base={"REMOTE_ADDR": "203.0.113.9"},
        )
        .status_code
        for i in range(5)
    ]
    assert codes == [401, 401, 401, 429, 429]


def test_guessing_the_current_password_is_limited(make_app):
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_ACCOUNT_RATE_LIMIT="2 per minute")
    client = app.test_client()
    AuthActions(client).register()
    codes = [
        client.post(
            "/account/password", data={"current_password": f"guess {i}", "new_password": "x" * 12}
        ).status_code
        for i in range(4)
    ]
    assert codes == [400, 400, 429, 429]

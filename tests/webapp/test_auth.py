"""Register, log in, log out through the real views and the real database."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD


def test_register_signs_in_and_shows_zero_balance(client, auth, owner):
    response = auth.register()
    assert response.status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    assert b'id="token-balance" data-balance="0"' in page.data
    stored = owner.execute(
        "select password_hash from tokenbill.users where email = %s", [auth.email]
    ).fetchone()["password_hash"]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_email_is_unique_case_insensitively(client, auth):
    auth.register(email="Case@Example.test")
    auth.logout()
    response = auth.register(email="case@example.TEST")
    assert response.status_code == 400
    assert b"already exists" in response.data


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("not-an-email", PASSWORD, b"valid email"),
        ("ok@example.test", "short", b"at least 8"),
    ],
)
def test_register_validates_input(client, email, password, message):
    response = client.post("/auth/register", data={"email": email, "password": password})
    assert response.status_code == 400
    assert message in response.data


def test_login_logout(client, auth):
    auth.register()
    auth.logout()
    assert client.get("/").status_code == 302
    assert auth.login(password="wrong password").status_code == 401
    response = auth.login()
    assert response.status_code == 303
    assert client.get("/").status_code == 200


def test_login_ignores_offsite_next(client, auth):
    auth.register()
    auth.logout()
    response = client.post(
        "/auth/login?next=//evil.example/",
        data={"email": auth.email, "password": PASSWORD},
    )
    assert response.headers["Location"] == "/"


def test_unauthenticated_pages_redirect_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]


def test_csrf_token_missing_is_400(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    response = app.test_client().post(
        "/auth/register", data={"email": "x@example.test", "password": PASSWORD}
    )
    assert response.status_code == 400

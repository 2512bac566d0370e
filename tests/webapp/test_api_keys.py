"""API keys: created on a page, secret shown once and stored hashed, usable, revocable."""

from __future__ import annotations

import hashlib
import re
import uuid

from tests.conftest import balance_of
from tests.support.agents import bearer, create_key

SECRET_RE = re.compile(rb'<code id="new-api-key">(tb_[A-Za-z0-9_-]+)</code>')


def make_key(client, name="my script") -> str:
    response = client.post("/account/keys/", data={"name": name})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    return SECRET_RE.search(response.data).group(1).decode()


def test_keys_page_needs_login(client):
    response = client.get("/account/keys/")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    assert client.post("/account/keys/", data={"name": "x"}).status_code == 302


def test_create_shows_the_secret_once_and_stores_only_its_hash(client, auth, owner):
    auth.register()
    secret = make_key(client)
    assert len(secret) > 40
    row = owner.execute(
        "select k.name, k.prefix, k.key_hash from tokenbill.api_keys k"
        " join tokenbill.users u on u.id = k.user_id where u.email = %s",
        [auth.email],
    ).fetchone()
    assert row["name"] == "my script"
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(row["prefix"]) and row["prefix"] != secret
    page = client.get("/account/keys/")
    assert secret.encode() not in page.data
    assert row["prefix"].encode() in page.data


def test_key_authenticates_the_agent_until_revoked(app, client, auth, owner, admin_id):
    auth.register()
    user = auth.user_id(owner)
    owner.execute("select api.admin_adjust(%s, %s, 5, 'test')", [admin_id, user])
    secret = make_key(client)
    api = app.test_client()  # no cookie: the key alone
    assert api.post("/api/agent", json={"message": "hi"}, headers=bearer(secret)).status_code == 200
    key_id = owner.execute(
        "select id, last_used_at from api.api_keys where user_id = %s", [user]
    ).fetchone()
    assert key_id["last_used_at"] is not None

    response = client.post(f"/account/keys/{key_id['id']}/revoke")
    assert response.status_code == 303
    refused = api.post("/api/agent", json={"message": "hi"}, headers=bearer(secret))
    assert refused.status_code == 401
    assert balance_of(owner, user) == 4
    assert b"revoked" in client.get("/account/keys/").data
    # revoking twice is not found: the key is no longer live
    assert client.post(f"/account/keys/{key_id['id']}/revoke").status_code == 404


def test_cannot_revoke_someone_elses_key(client, auth, owner, make_user):
    other = make_user(balance=1)
    secret = create_key(owner, other)
    key_id = owner.execute("select id from api.api_keys where user_id = %s", [other]).fetchone()
    auth.register()
    assert client.post(f"/account/keys/{key_id['id']}/revoke").status_code == 404
    assert client.post("/account/keys/not-a-uuid/revoke").status_code == 404
    assert b"Your keys" in client.get("/account/keys/").data
    assert b"tb_" not in client.get("/account/keys/").data  # other's key prefix is not listed
    response = client.application.test_client().post(
        "/api/agent", json={"message": "hi"}, headers=bearer(secret)
    )
    assert response.status_code == 200


def test_name_is_required(client, auth):
    auth.register()
    response = client.post("/account/keys/", data={"name": "  "})
    assert response.status_code == 400 and b"Give the key a name" in response.data


def test_create_without_csrf_token_is_400(make_app, owner):
    app = make_app(WTF_CSRF_ENABLED=True)
    client = app.test_client()
    page = client.get("/auth/register")
    token = re.search(rb'name="csrf-token" content="([^"]+)"', page.data).group(1).decode()
    client.post(
        "/auth/register",
        data={
            "email": f"keys-{uuid.uuid4().hex[:8]}@example.test",
            "password": "correct horse battery",
            "csrf_token": token,
        },
    )
    assert client.post("/account/keys/", data={"name": "x"}).status_code == 400
    assert client.post("/account/keys/", data={"name": "x", "csrf_token": token}).status_code == 201

"""The whole app on non-superuser NOINHERIT logins, one per duty, as scripts/run sets it up.

The web login (tokenbill_app + tokenbill_admin) serves pages and admin adjustments; only the
Stripe login (tokenbill_webhook) can apply events, and only the auth login (tokenbill_auth)
can read a password hash. None can reach another's functions, even after RESET ROLE.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import PASSWORD, WEBHOOK_SECRET, AuthActions, balance_of
from tests.support import stripe_events as ev
from webapp.ops import db_logins


@pytest.fixture(scope="module")
def logins(admin_url: str, database_url: str) -> Iterator[dict[str, str]]:
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    urls = {}
    for duty, groups in db_logins.GROUPS.items():
        name, password = f"tb_test_{duty}_{tag}", uuid.uuid4().hex
        db_logins.ensure_login(admin_url, name, password, groups)
        urls[duty] = make_conninfo(database_url, user=name, password=password)
    yield urls
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for duty in urls:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(f"tb_test_{duty}_{tag}")))


@pytest.fixture
def app_on_logins(make_app, logins):
    return make_app(
        DATABASE_URL=logins["web"],
        WEBHOOK_DATABASE_URL=logins["stripe"],
        AUTH_DATABASE_URL=logins["signin"],
    )


def test_purchase_webhook_and_admin_work_on_least_privilege_logins(app_on_logins, owner):
    client = app_on_logins.test_client()
    buyer = AuthActions(client)
    assert buyer.register().status_code == 303
    user = buyer.user_id(owner)

    cs = ev.new_id("cs")
    owner.execute("select api.record_checkout_session(%s, %s, 'tokens_100')", [cs, user])
    body, header = ev.signed(
        ev.checkout_session_completed(user, "tokens_100", 500, cs=cs), WEBHOOK_SECRET
    )
    response = client.post("/api/webhook/stripe", data=body, headers={"Stripe-Signature": header})
    assert response.status_code == 200 and response.get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100

    admin = AuthActions(app_on_logins.test_client())
    admin.register()
    owner.execute("select api.set_admin(%s)", [admin.email])
    response = admin.client.post(
        f"/admin/users/{user}/adjust", data={"delta": "5", "reason": "goodwill"}
    )
    assert response.status_code == 303
    assert balance_of(owner, user) == 105
    assert admin.client.post("/admin/audit").status_code == 200  # ledger_audit as tokenbill_admin


def refused_as_every_web_role(conn: psycopg.Connection, query: str, params: object) -> None:
    """``query`` is refused to the web login as itself and as each role it may SET; the
    connection is left as the login itself."""
    for role in ("tokenbill_app", "tokenbill_admin", None):
        conn.execute("reset role")
        if role:
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(query, params)  # type: ignore[arg-type]
            pytest.fail(f"as {role or 'the login'} the web login ran {query}")
    conn.execute("reset role")


def test_the_web_login_cannot_apply_stripe_events(logins, make_user, owner):
    user = make_user()
    unsigned = json.dumps(ev.payment_intent_succeeded(user, "tokens_600", 2000))
    with psycopg.connect(logins["web"], autocommit=True) as conn:
        refused_as_every_web_role(
            conn, "select * from api.handle_stripe_event(%s::jsonb)", [unsigned]
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("set role tokenbill_webhook")
    assert balance_of(owner, user) == 0


def test_the_stripe_login_cannot_use_the_web_surface(logins, make_user):
    user = make_user()
    with psycopg.connect(logins["stripe"], autocommit=True) as conn:
        conn.execute("set role tokenbill_webhook")
        for call in (
            "select api.register_user('x@example.test', 'h')",
            f"select api.start_web_session('{user}', '{'0' * 64}')",
            "select * from api.user_credentials('x@example.test')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(call)
        for role in ("tokenbill_app", "tokenbill_admin"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))


# --------------------------------------------------------------------------------------------
# Password hashes: only the auth login (tokenbill_auth) reads them
# --------------------------------------------------------------------------------------------
@pytest.fixture
def victim(make_user) -> dict[str, object]:
    email = f"victim-{uuid.uuid4().hex[:8]}@example.test"
    return {"email": email, "user": make_user(email=email, password_hash="victim-hash")}


def test_the_web_login_cannot_read_a_password_hash(logins, victim):
    """The adversary holds DATABASE_URL (a leaked .env, SQL reachable from any page): as any
    role it may take, it reads no password hash for offline cracking, and it cannot become
    tokenbill_auth."""
    with psycopg.connect(logins["web"], autocommit=True) as conn:
        refused_as_every_web_role(conn, "select * from api.user_credentials(%(email)s)", victim)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("set role tokenbill_auth")


# What a stolen AUTH_DATABASE_URL must not reach: tokens, sessions, keys, other users' data.
AUTH_REFUSED = {
    "consume tokens": "select * from api.consume(%(user)s, 'stolen')",
    "grant tokens": "select * from api.grant_for_payment('pi_FORGED', %(user)s::text,"
    " 'tokens_600', 2000, 'usd')",
    "apply a Stripe event": "select * from api.handle_stripe_event('{}'::jsonb, false)",
    "adjust a balance": "select api.admin_adjust_balance(repeat('0', 64), %(user)s, 5, 'x')",
    "read the ledger": "select * from api.ledger_entries",
    "read the accounts": "select * from api.accounts",
    "read the API keys": "select * from api.api_keys",
    "start a session": "select api.start_web_session(%(user)s, repeat('0', 64))",
    "register": "select api.register_user('stolen@example.test', 'h')",
    "change a password": "select api.change_password(repeat('0', 64), 'h')",
    "mint an API key": "select api.create_api_key(%(user)s, 'stolen', 'tb_stolen', 'x')",
    "sweep holds": "select api.expire_agent_holds()",
}


def test_the_auth_login_reads_credentials_and_nothing_else(logins, victim, owner):
    """The adversary holds AUTH_DATABASE_URL: it can check passwords (that is its job), but
    cannot spend, grant or move tokens, start sessions, mint keys or read anyone's data, and
    cannot SET ROLE to any other group role."""
    with psycopg.connect(logins["signin"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # NOINHERIT: nothing yet
            conn.execute("select * from api.user_credentials(%(email)s)", victim)
        conn.execute("set role tokenbill_auth")
        row = conn.execute("select * from api.user_credentials(%(email)s)", victim).fetchone()
        assert row is not None and row[:2] == (victim["user"], "victim-hash")
        for what, call in AUTH_REFUSED.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(call, victim)
                pytest.fail(f"the auth login could {what}")
        for role in ("tokenbill_app", "tokenbill_webhook", "tokenbill_admin",
                     "tokenbill_notifier", "tokenbill_sweeper"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
    assert balance_of(owner, victim["user"]) == 0
    keys = owner.execute("select id from api.api_keys where user_id = %s", [victim["user"]])
    assert keys.fetchall() == []


def test_login_and_password_change_work_on_least_privilege_logins(app_on_logins):
    """Login and the change-password check read the hash through AUTH_DATABASE_URL."""
    browser = AuthActions(app_on_logins.test_client())
    assert browser.register().status_code == 303
    assert browser.client.post("/auth/logout").status_code == 303
    assert browser.login(password="wrong password!").status_code == 401
    assert browser.login().status_code == 303
    refused = browser.client.post(
        "/account/password",
        data={"current_password": "wrong password!", "new_password": "a new long password"},
    )
    assert refused.status_code == 400
    changed = browser.client.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": "a new long password"},
    )
    assert changed.status_code == 303
    browser.client.post("/auth/logout")
    assert browser.login().status_code == 401
    assert browser.login(password="a new long password").status_code == 303

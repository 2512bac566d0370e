"""The whole app on non-superuser NOINHERIT logins, one per duty, as scripts/run sets it up.

The web login (tokenbill_app + tokenbill_admin) serves pages and admin adjustments; only the
Stripe login (tokenbill_webhook) can apply events. Neither can reach the other's functions,
even after RESET ROLE.
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

from tests.conftest import WEBHOOK_SECRET, AuthActions, balance_of
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
    return make_app(DATABASE_URL=logins["web"], WEBHOOK_DATABASE_URL=logins["stripe"])


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


def test_the_web_login_cannot_apply_stripe_events(logins, make_user, owner):
    user = make_user()
    unsigned = json.dumps(ev.payment_intent_succeeded(user, "tokens_600", 2000))
    with psycopg.connect(logins["web"], autocommit=True) as conn:
        for role in ("tokenbill_app", "tokenbill_admin", None):
            conn.execute("reset role")
            if role:
                conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select * from api.handle_stripe_event(%s::jsonb)", [unsigned])
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

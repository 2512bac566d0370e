"""A compromised app role cannot grant, apply unsigned events or adjust as an admin it is not.

Each test is an attack from the audit in issue 11, run as the role the attacker would hold.
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

from tests.conftest import balance_of, connect_as_role
from tests.support import stripe_events as ev

DENIED = psycopg.errors.InsufficientPrivilege


def test_app_role_cannot_grant_for_a_forged_payment(app_conn, owner, make_user):
    user = make_user()
    with pytest.raises(DENIED):
        app_conn.execute(
            "select * from api.grant_for_payment('pi_FORGED', %s, 'tokens_600', 2000, 'usd')",
            [str(user)],
        )
    assert balance_of(owner, user) == 0


def test_app_role_cannot_apply_an_unsigned_event(app_conn, owner, make_user):
    user = make_user()
    evt = ev.payment_intent_succeeded(user, "tokens_600", 2000)
    with pytest.raises(DENIED):
        app_conn.execute("select * from api.handle_stripe_event(%s::jsonb)", [json.dumps(evt)])
    with pytest.raises(DENIED):
        app_conn.execute(
            "select * from api.fulfil_checkout_session(%s::jsonb, %s)",
            [json.dumps(ev.checkout_session_object(user, "tokens_600", 2000)), user],
        )
    assert balance_of(owner, user) == 0


@pytest.mark.parametrize(
    "call",
    [
        "select api.admin_adjust(%(admin)s, %(user)s, 1000000, 'x')",
        "select api.revoke_for_refund('pi_x', 'ch_x', 0)",
        "select * from api.consume(%(user)s, 'r1')",
        "select * from api.release(%(user)s, 'r1')",
        "select * from api.ledger_audit()",
        "select * from api.claim_alert_notifications(1)",
        # 0031: password hashes are tokenbill_auth's alone (AUTH_DATABASE_URL)
        "select * from api.user_credentials('x@example.test')",
    ],
)
def test_app_role_cannot_call_internals_or_admin_functions(app_conn, make_user, admin_id, call):
    with pytest.raises(DENIED):
        app_conn.execute(call, {"admin": admin_id, "user": make_user()})


def test_admin_adjust_needs_a_live_admin_session_not_an_admin_id(
    database_url, owner, make_user, admin_id
):
    """Even as the admin role, an admin's id is not enough: the actor is a live session's."""
    user = make_user()
    with connect_as_role(database_url, "tokenbill_admin") as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("select api.admin_adjust_balance(%s, %s, 1000000, 'x')", ["0" * 64, user])
        assert refused.value.sqlstate == "TB006"
        token = uuid.uuid4().hex * 2
        owner.execute("select api.start_web_session(%s, %s)", [admin_id, token])
        row = conn.execute(
            "select api.admin_adjust_balance(%s, %s, 7, 'goodwill') as b", [token, user]
        ).fetchone()
        assert row["b"] == 7
        owner.execute("select api.end_web_session(%s)", [token])
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("select api.admin_adjust_balance(%s, %s, 7, 'again')", [token, user])
        assert refused.value.sqlstate == "TB006"
    actor = owner.execute(
        "select actor_id from api.ledger_entries where user_id = %s and kind = 'admin_adjustment'",
        [user],
    ).fetchall()
    assert actor == [{"actor_id": admin_id}]


# --------------------------------------------------------------------------------------------
# Login roles: NOINHERIT members that can only SET ROLE to their own group role
# --------------------------------------------------------------------------------------------
@pytest.fixture
def web_login(admin_url: str, database_url: str) -> Iterator[str]:
    """A non-superuser login made by webapp.ops.db_logins for tokenbill_app; dropped after."""
    from webapp.ops import db_logins

    name = f"tb_test_web_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    password = uuid.uuid4().hex
    db_logins.ensure_login(admin_url, name, password, ["tokenbill_app"])
    yield make_conninfo(database_url, user=name, password=password)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_a_login_holds_nothing_until_it_sets_its_role(web_login):
    with psycopg.connect(web_login, autocommit=True) as conn:
        attrs = conn.execute(
            "select rolsuper, rolinherit, rolcreaterole, rolcreatedb from pg_roles"
            " where rolname = current_user"
        ).fetchone()
        assert attrs == (False, False, False, False)
        with pytest.raises(DENIED):
            conn.execute("select count(*) from api.packages")
        conn.execute("set role tokenbill_app")
        assert conn.execute("select count(*) from api.packages").fetchone()[0] >= 3  # type: ignore[index]
        conn.execute("reset role")  # the escape hatch leads back to nothing
        with pytest.raises(DENIED):
            conn.execute("select count(*) from api.packages")
        for other in ("tokenbill_webhook", "tokenbill_admin", "postgres"):
            with pytest.raises(DENIED):
                conn.execute(sql.SQL("set role {}").format(sql.Identifier(other)))

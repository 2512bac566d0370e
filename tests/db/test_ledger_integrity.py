"""The ledger is append-only, the app role cannot write balances, the audit catches drift."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import audit, balance_of


def test_ledger_rows_cannot_be_updated_or_deleted_even_by_the_owner(owner, make_user):
    make_user(balance=10)
    for statement in (
        "update tokenbill.ledger set delta = 1000",
        "delete from tokenbill.ledger",
        "truncate tokenbill.ledger cascade",
    ):
        with pytest.raises(psycopg.Error) as info:
            owner.execute(statement)
        assert info.value.sqlstate == "TB001", statement


@pytest.mark.parametrize(
    "statement",
    [
        "update tokenbill.users set balance = 1000000",
        "insert into tokenbill.ledger (user_id, kind, delta, balance_after) "
        "select id, 'admin_adjustment', 5, 5 from tokenbill.users limit 1",
        "select password_hash from tokenbill.users",
        "update tokenbill.packages set active = false",
        "select * from api.set_admin('someone@example.test')",
        "select tokenbill.post_entry(gen_random_uuid(), 'purchase', 10)",
    ],
)
def test_app_role_cannot_write_tables_or_call_internals(app_conn, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute(statement)


def test_app_role_reads_accounts_without_password_hashes(app_conn, make_user):
    user = make_user(balance=7)
    row = app_conn.execute("select * from api.accounts where id = %s", [user]).fetchone()
    assert row["balance"] == 7
    assert "password_hash" not in row


def test_package_terms_are_immutable(owner):
    with pytest.raises(psycopg.Error) as info:
        owner.execute("update tokenbill.packages set amount_cents = 1 where code = 'tokens_100'")
    assert info.value.sqlstate == "TB001"
    with pytest.raises(psycopg.Error):
        owner.execute("delete from tokenbill.packages where code = 'tokens_100'")


def test_seeded_packages(app_conn):
    rows = app_conn.execute(
        "select code, tokens, amount_cents, currency from api.packages order by sort_order"
    ).fetchall()
    assert [(r["tokens"], r["amount_cents"], r["currency"]) for r in rows] == [
        (100, 500, "usd"),
        (250, 1000, "usd"),
        (600, 2000, "usd"),
    ]


def test_admin_adjust_rules(owner, admin_id, make_user):
    user = make_user(balance=5)
    not_admin = make_user()
    cases = [
        ((not_admin, user, 5, "gift"), "TB006"),
        ((admin_id, user, 5, "  "), "TB003"),
        ((admin_id, user, 0, "nothing"), "TB003"),
        ((admin_id, user, -6, "too much"), "TB005"),
    ]
    for args, sqlstate in cases:
        with pytest.raises(psycopg.Error) as info:
            owner.execute("select api.admin_adjust(%s, %s, %s, %s)", list(args))
        assert info.value.sqlstate == sqlstate
    assert (
        owner.execute(
            "select api.admin_adjust(%s, %s, -5, 'correction') as b", [admin_id, user]
        ).fetchone()["b"]
        == 0
    )
    row = owner.execute(
        "select kind, reason, actor_id from api.ledger_entries"
        " where user_id = %s order by id desc limit 1",
        [user],
    ).fetchone()
    assert row == {"kind": "admin_adjustment", "reason": "correction", "actor_id": admin_id}


def test_audit_detects_a_balance_changed_behind_the_ledger(owner, make_user):
    """The audit must be able to fail: tamper as the owner (bypassing the functions)."""
    user = make_user(balance=10)
    assert audit(owner) == []
    owner.execute("update tokenbill.users set balance = balance + 1 where id = %s", [user])
    try:
        rows = audit(owner)
        assert [r["user_id"] for r in rows] == [user]
        assert rows[0]["balance"] == 11 and rows[0]["ledger_sum"] == 10
    finally:
        owner.execute("update tokenbill.users set balance = balance - 1 where id = %s", [user])
    assert audit(owner) == []
    assert balance_of(owner, user) == 10

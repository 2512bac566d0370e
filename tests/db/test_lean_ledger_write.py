"""0020's leaner ledger write keeps every guarantee it no longer gets from a constraint.

The adversaries: a client firing the same request id at the same moment (consume is now one
statement whose INSERT … ON CONFLICT sees the twin's committed charge), a compromised or
careless owner session deleting the accounts or payments that ledger rows name (the ledger's
foreign keys were replaced by a guard), and a writer that skips the profile rules now that
they are a trigger on the profile columns instead of CHECKs on every balance update. The auto
top-up moved from a ledger trigger into the writers, which read a copy of the enabled
threshold: the copy must follow every way the settings change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import audit, balance_of
from tests.support.consume import twin_while_first_is_open

PACKAGE, PRICE = "tokens_100", 500


@pytest.fixture(autouse=True)
def ledger_stays_consistent(owner):
    yield
    assert audit(owner) == []


def test_a_twin_of_a_charge_that_took_the_last_tokens_is_replayed(
    database_url: str, owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    # The twin's UPDATE finds too few tokens once the first commits: it must still answer
    # 'replayed' with the first result, not 'insufficient_tokens'.
    user = make_user(balance=2)
    first, twin = twin_while_first_is_open(database_url, user, 2)
    assert first["ok"]
    assert twin == {
        "ok": True,
        "balance": 0,
        "reason": "replayed",
    }
    assert balance_of(owner, user) == 0


def test_a_twin_that_could_pay_again_gives_its_move_back(
    database_url: str, owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    user = make_user(balance=10)
    first, twin = twin_while_first_is_open(database_url, user, 3)
    assert first["ok"]
    assert twin == {
        "ok": True,
        "balance": 7,
        "reason": "replayed",
    }
    assert balance_of(owner, user) == 7
    rows = owner.execute(
        "select count(*) as n from tokenbill.ledger where user_id = %s", [user]
    ).fetchone()
    assert rows["n"] == 2  # the funding and one consumption


def test_consume_answers_for_an_unknown_user_and_a_short_balance(
    owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    with pytest.raises(psycopg.Error) as unknown:
        owner.execute("select * from api.consume(%s, 'r', 1)", [uuid.uuid4()])
    assert unknown.value.sqlstate == "TB002"
    user = make_user(balance=1)
    row = owner.execute("select * from api.consume(%s, 'big', 5)", [user]).fetchone()
    assert row == {"ok": False, "balance": 1, "reason": "insufficient_tokens"}


@pytest.mark.parametrize(
    "statement",
    [
        "delete from tokenbill.users where id = %s",
        "truncate tokenbill.users cascade",
        "delete from tokenbill.payments where user_id = %s",
        "truncate tokenbill.payments cascade",
    ],
)
def test_what_a_ledger_row_names_cannot_be_deleted(
    owner: psycopg.Connection, make_user: Callable[..., uuid.UUID], statement: str
) -> None:
    user = make_user(balance=3)
    owner.execute(
        "insert into tokenbill.payments (payment_intent_id, user_id, package_code, amount_cents,"
        " currency) values (%s, %s, 'tokens_100', 500, 'usd')",
        [f"pi_test_{uuid.uuid4().hex}", user],
    )
    with pytest.raises(psycopg.Error) as refused:
        owner.execute(statement, [user] if "%s" in statement else None)
    assert refused.value.sqlstate == "TB001"
    assert balance_of(owner, user) == 3


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "insert into tokenbill.users (email, password_hash) values ('Upper@Example.test', 'x')",
            "users_email_check",
        ),
        (
            "insert into tokenbill.users (email, password_hash) values ('no-at-sign', 'x')",
            "users_email_check",
        ),
        (
            "update tokenbill.users set email = ' padded@example.test' where id = %s",
            "users_email_check",
        ),
        (
            "update tokenbill.users set low_balance_threshold = -1 where id = %s",
            "users_low_balance_threshold_check",
        ),
        (
            "update tokenbill.users set low_balance_threshold = 1000001 where id = %s",
            "users_low_balance_threshold_check",
        ),
    ],
)
def test_profile_rules_still_refuse_bad_rows(
    owner: psycopg.Connection,
    make_user: Callable[..., uuid.UUID],
    statement: str,
    constraint: str,
) -> None:
    user = make_user()
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        owner.execute(statement, [user] if "%s" in statement else None)
    assert refused.value.diag.constraint_name == constraint


def _threshold_copy(owner: psycopg.Connection, user: uuid.UUID) -> int | None:
    return owner.execute(
        "select auto_topup_threshold as t from tokenbill.users where id = %s", [user]
    ).fetchone()["t"]


def test_the_writers_copy_of_the_auto_topup_threshold_follows_the_settings(
    owner: psycopg.Connection, app_conn: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    user = make_user(balance=100)
    assert _threshold_copy(owner, user) is None

    def save(enabled: bool, threshold: int) -> None:
        app_conn.execute(
            "select api.set_auto_topup(%s, %s, %s, %s, %s)",
            [user, enabled, threshold, PACKAGE, PRICE * 4],
        )

    save(True, 40)
    assert _threshold_copy(owner, user) == 40
    save(True, 25)
    assert _threshold_copy(owner, user) == 25
    save(False, 25)
    assert _threshold_copy(owner, user) is None
    save(True, 30)
    # the third failure in a row turns auto top-up off through fail_auto_topup
    owner.execute(
        "update tokenbill.auto_topup_settings set consecutive_failures = 2 where user_id = %s",
        [user],
    )
    owner.execute(
        "insert into tokenbill.auto_topups (user_id, ledger_id, package_code, amount_cents,"
        " currency, month, idempotency_key)"
        " select %s, max(id), %s, %s, 'usd', current_date, %s from tokenbill.ledger"
        " where user_id = %s",
        [user, PACKAGE, PRICE, f"key-{uuid.uuid4().hex}", user],
    )
    owner.execute(
        "select tokenbill.fail_auto_topup(t.id, 'declined') from tokenbill.auto_topups t"
        " where t.user_id = %s",
        [user],
    )
    assert _threshold_copy(owner, user) is None
    # turned off: a crossing queues nothing more
    owner.execute("select * from api.consume(%s, 'below', 80)", [user])
    queued = owner.execute(
        "select count(*) as n from tokenbill.auto_topups where user_id = %s", [user]
    ).fetchone()
    assert queued["n"] == 1


def test_a_balance_write_locks_the_users_row_once(
    owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    """0028: a BEFORE UPDATE row trigger on users (0020's profile rules, even limited to
    UPDATE OF email, low_balance_threshold) makes every UPDATE lock the row before updating
    it: one more WAL record per balance write, and under one hot account the waiters' lock
    re-ran the statement's InitPlans. The rules run AFTER now: a balance write is one HOT
    update, nothing before it."""
    user = make_user(balance=5)
    owner.execute("create extension if not exists pg_walinspect")
    try:
        owner.execute("begin")
        xid = owner.execute("select pg_current_xact_id()::text as x").fetchone()["x"]
        start = owner.execute("select pg_current_wal_insert_lsn() as l").fetchone()["l"]
        owner.execute("select api.consume(%s, 'one-lock', 1)", [user])
        owner.execute("commit")
        records = owner.execute(
            "select record_type as r from pg_get_wal_records_info(%s, pg_current_wal_flush_lsn())"
            " where resource_manager = 'Heap' and xid::text = %s",
            [start, xid],
        ).fetchall()
    finally:
        owner.execute("drop extension pg_walinspect")
    # the balance, then the ledger row (inserted speculatively: ON CONFLICT, then confirmed)
    assert [r["r"] for r in records] == ["HOT_UPDATE", "INSERT", "HEAP_CONFIRM"]

"""api.grant_for_payment, refunds and disputes: once per payment, proportional, in any order."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import audit, balance_of, connect_owner

GRANT = "select * from api.grant_for_payment(%s, %s, %s, %s, %s)"


def pi() -> str:
    return f"pi_test_{uuid.uuid4().hex[:16]}"


def test_grant_20_times_concurrently_credits_once(database_url, owner, make_user):
    user, intent = make_user(), pi()

    def grant(_: int) -> str:
        with connect_owner(database_url) as conn:
            return conn.execute(GRANT, [intent, str(user), "tokens_250", 1000, "usd"]).fetchone()[
                "status"
            ]

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(grant, range(20)))
    assert statuses.count("granted") == 1
    assert statuses.count("already_granted") == 19
    assert balance_of(owner, user) == 250
    assert audit(owner) == []


def test_tokens_come_from_the_package_table(owner, make_user):
    user = make_user()
    row = owner.execute(GRANT, [pi(), str(user), "tokens_600", 2000, "USD"]).fetchone()
    assert row == {"status": "granted", "tokens": 600, "balance": 600, "reason": None}


@pytest.mark.parametrize(
    ("user", "package", "amount", "currency", "reason"),
    [
        ("self", "tokens_100", 499, "usd", "amount mismatch"),
        ("self", "tokens_100", 500, "eur", "amount mismatch"),
        ("self", "tokens_100", None, "usd", "amount mismatch"),
        ("self", "tokens_999", 500, "usd", "unknown package"),
        ("unknown", "tokens_100", 500, "usd", "unknown user"),
        ("not-a-uuid", "tokens_100", 500, "usd", "malformed user id"),
        (None, "tokens_100", 500, "usd", "malformed user id"),
    ],
)
def test_bad_payments_are_rejected_and_recorded(
    owner, make_user, user, package, amount, currency, reason
):
    me = make_user()
    user_arg = {"self": str(me), "unknown": str(uuid.uuid4())}.get(user, user)
    intent = pi()
    row = owner.execute(GRANT, [intent, user_arg, package, amount, currency]).fetchone()
    assert row["status"] == "rejected"
    assert reason in row["reason"]
    assert balance_of(owner, me) == 0
    stored = owner.execute(
        "select status, reason from api.purchases where payment_intent_id = %s", [intent]
    ).fetchone()
    assert stored["status"] == "rejected" and reason in stored["reason"]


def test_payment_must_match_the_recorded_checkout_session(owner, make_user):
    alice, mallory = make_user(), make_user()
    owner.execute("select api.record_checkout_session('cs_test_match', %s, 'tokens_100')", [alice])
    row = owner.execute(
        "select * from api.grant_for_payment(%s, %s, 'tokens_100', 500, 'usd', 'cs_test_match')",
        [pi(), str(mallory)],
    ).fetchone()
    assert row["status"] == "rejected" and "does not match checkout session" in row["reason"]
    assert balance_of(owner, mallory) == 0


def test_a_rejected_payment_can_still_be_granted_by_a_correct_event(owner, make_user):
    user, intent = make_user(), pi()
    owner.execute(GRANT, [intent, str(user), "tokens_100", None, "usd"])
    row = owner.execute(GRANT, [intent, str(user), "tokens_100", 500, "usd"]).fetchone()
    assert row["status"] == "granted"


def refund(conn, intent: str, total: int) -> int:
    return conn.execute(
        "select api.revoke_for_refund(%s, 'ch_x', %s) as n", [intent, total]
    ).fetchone()["n"]


def test_partial_then_full_refund_takes_back_proportionally(owner, make_user):
    user, intent = make_user(), pi()
    owner.execute(GRANT, [intent, str(user), "tokens_100", 500, "usd"])
    assert refund(owner, intent, 100) == 20  # $1 of $5
    assert refund(owner, intent, 100) == 0  # same event again
    assert refund(owner, intent, 50) == 0  # an older, smaller total arriving late
    assert refund(owner, intent, 500) == 80  # the rest
    assert balance_of(owner, user) == 0
    status = owner.execute(
        "select display_status from api.purchases where payment_intent_id = %s", [intent]
    ).fetchone()["display_status"]
    assert status == "refunded"
    assert audit(owner) == []


def test_refund_rounds_up_and_may_make_the_balance_negative(owner, make_user):
    user, intent = make_user(), pi()
    owner.execute(GRANT, [intent, str(user), "tokens_250", 1000, "usd"])
    owner.execute("select * from api.consume(%s, 'spend', 250)", [user])
    assert refund(owner, intent, 1) == 1  # 0.25 token rounds up to 1
    assert balance_of(owner, user) == -1
    refused = owner.execute("select * from api.consume(%s, 'next')", [user]).fetchone()
    assert refused["ok"] is False
    assert audit(owner) == []


def test_refund_reported_before_the_grant_is_applied_at_grant_time(owner, make_user):
    user, intent = make_user(), pi()
    assert refund(owner, intent, 500) == 0
    row = owner.execute(GRANT, [intent, str(user), "tokens_100", 500, "usd"]).fetchone()
    assert row["status"] == "granted"
    assert balance_of(owner, user) == 0
    assert audit(owner) == []


def dispute(conn, dispute_id: str, intent: str, amount: int, status: str) -> int:
    return conn.execute(
        "select api.revoke_for_dispute(%s, %s, 'ch_x', %s, %s) as n",
        [dispute_id, intent, amount, status],
    ).fetchone()["n"]


def test_dispute_holds_tokens_and_a_won_dispute_gives_them_back(owner, make_user):
    user, intent = make_user(), pi()
    owner.execute(GRANT, [intent, str(user), "tokens_100", 500, "usd"])
    assert dispute(owner, "dp_1", intent, 500, "needs_response") == 100
    assert dispute(owner, "dp_1", intent, 500, "needs_response") == 0
    assert balance_of(owner, user) == 0
    assert dispute(owner, "dp_1", intent, 500, "won") == -100
    assert balance_of(owner, user) == 100
    # a late 'created' delivery does not reopen a closed dispute
    assert dispute(owner, "dp_1", intent, 500, "needs_response") == 0
    assert balance_of(owner, user) == 100
    assert audit(owner) == []


def test_lost_dispute_keeps_tokens_taken_and_refund_plus_dispute_never_exceeds_grant(
    owner, make_user
):
    user, intent = make_user(), pi()
    owner.execute(GRANT, [intent, str(user), "tokens_100", 500, "usd"])
    assert refund(owner, intent, 250) == 50
    assert dispute(owner, f"dp_{intent}", intent, 500, "needs_response") == 50  # capped
    assert dispute(owner, f"dp_{intent}", intent, 500, "lost") == 0
    assert balance_of(owner, user) == 0
    assert audit(owner) == []


def test_revoke_for_unknown_charge_without_intent_raises(owner):
    with pytest.raises(psycopg.Error) as info:
        owner.execute("select api.revoke_for_refund(null, 'ch_nobody', 100)")
    assert info.value.sqlstate == "TB002"

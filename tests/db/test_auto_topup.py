"""Auto top-up in PostgreSQL: one queued top-up per threshold crossing, the monthly cap, the
worker's outcomes and the webhook's grant (0019).

The worker (notifier role) only records what Stripe said; tokens arrive through
api.handle_stripe_event as for any purchase, so refunds claw back the same way.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import audit, balance_of, connect_as_role, connect_owner
from tests.support import stripe_events as ev

PACKAGE, PRICE, TOKENS = "tokens_100", 500, 100


@pytest.fixture
def notifier(database_url):
    with connect_as_role(database_url, "tokenbill_notifier") as conn:
        yield conn


@pytest.fixture(autouse=True)
def ledger_stays_consistent(owner):
    # The outbox is shared by the whole test database: earlier tests' rows are not ours.
    owner.execute("update tokenbill.auto_topups set status = 'canceled' where status = 'pending'")
    yield
    assert audit(owner) == []


def enable(conn, user, *, threshold=50, cap=PRICE * 4, enabled=True, package=PACKAGE):
    conn.execute(
        "select api.set_auto_topup(%s, %s, %s, %s, %s)", [user, enabled, threshold, package, cap]
    )


def spend(conn, user, cost, request_id=None):
    return conn.execute(
        "select * from api.consume(%s, %s, %s)", [user, request_id or uuid.uuid4().hex, cost]
    ).fetchone()


def topups(conn, user) -> list[dict[str, Any]]:
    return conn.execute(
        "select * from api.auto_topups where user_id = %s order by id", [user]
    ).fetchall()


def settings_of(conn, user) -> dict[str, Any]:
    return conn.execute(
        "select * from api.auto_topup_settings where user_id = %s", [user]
    ).fetchone()


def cross(owner, admin_id, user, threshold=50):
    """Lift the balance above the threshold if needed, then spend just below it."""
    balance = balance_of(owner, user)
    if balance < threshold:
        owner.execute(
            "select api.admin_adjust(%s, %s, %s, 'lift')", [admin_id, user, threshold - balance]
        )
        balance = threshold
    spend(owner, user, balance - threshold + 1)


def claim(notifier) -> dict[str, Any] | None:
    return notifier.execute("select * from api.claim_auto_topup()").fetchone()


def finish(notifier, topup_id, outcome, pi=None, url=None, error=None) -> str:
    return notifier.execute(
        "select api.finish_auto_topup(%s, %s, %s, %s, %s) as status",
        [topup_id, outcome, pi, url, error],
    ).fetchone()["status"]


def topup_intent_event(kind: str, user, topup_id, pi: str) -> dict[str, Any]:
    """A payment_intent.* event for an off-session top-up, with the worker's metadata."""
    builder = (
        ev.payment_intent_succeeded if kind == "succeeded" else ev.payment_intent_payment_failed
    )
    evt = builder(user, PACKAGE, PRICE, pi=pi)
    evt["data"]["object"]["metadata"]["topup_id"] = str(topup_id)
    evt["data"]["object"]["off_session"] = True
    if kind != "succeeded":
        evt["data"]["object"]["last_payment_error"] = {"message": "Your card was declined."}
    return evt


def apply(webhook_conn, evt) -> dict[str, Any]:
    return webhook_conn.execute(
        "select * from api.handle_stripe_event(%s::jsonb)", [json.dumps(evt)]
    ).fetchone()


# --------------------------------------------------------------------------------------------
def test_crossing_queues_one_topup_with_a_key_derived_from_the_crossing(owner, app_conn, make_user):
    user = make_user(balance=60)
    enable(app_conn, user)
    spend(owner, user, 5)  # 60 -> 55: above
    assert topups(owner, user) == []
    spend(owner, user, 10)  # 55 -> 45: crosses
    spend(owner, user, 10)  # 45 -> 35: already below, no new crossing
    [row] = topups(owner, user)
    assert (row["status"], row["package_code"], row["amount_cents"]) == ("pending", PACKAGE, PRICE)
    crossing = owner.execute(
        "select id, balance_after from api.ledger_entries where id = %s", [row["ledger_id"]]
    ).fetchone()
    assert crossing["balance_after"] == 45
    key = owner.execute(
        "select idempotency_key from tokenbill.auto_topups where id = %s", [row["id"]]
    ).fetchone()["idempotency_key"]
    assert key == f"tokenbill-topup-{user}-{row['ledger_id']}"


def test_disabled_or_unset_auto_topup_queues_nothing(owner, app_conn, make_user):
    unset, off = make_user(balance=60), make_user(balance=60)
    enable(app_conn, off, enabled=False)
    spend(owner, unset, 20)
    spend(owner, off, 20)
    assert topups(owner, unset) == [] and topups(owner, off) == []


def test_a_reservation_crossing_the_threshold_queues_a_topup(owner, app_conn, make_user):
    price = owner.execute("select max_per_call from api.agent_price('offline')").fetchone()
    user = make_user(balance=50 + price["max_per_call"] - 1)  # the reservation takes it to 49
    enable(app_conn, user)
    started = owner.execute(
        "select * from api.begin_agent_request(%s, 'r1', null, 'hi', 'offline', 'h', 60)", [user]
    ).fetchone()
    assert started["outcome"] == "started"
    assert [t["status"] for t in topups(owner, user)] == ["pending"]
    # settle it: a hold left open would be another test's expired hold a minute later
    owner.execute("select api.settle_agent_request(%s, 'r1', 'failed', '', 0)", [user])


def test_threshold_crossing_under_32_concurrent_consumers_creates_exactly_one_topup(
    database_url, owner, app_conn, make_user
):
    user = make_user(balance=200)
    enable(app_conn, user, threshold=100)
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def consumer(i: int) -> None:
        try:
            with connect_owner(database_url) as conn:
                barrier.wait()
                spend(conn, user, 7, f"c{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=consumer, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert balance_of(owner, user) < 100
    [row] = topups(owner, user)
    crossing = owner.execute(
        "select balance_after, delta from api.ledger_entries where id = %s", [row["ledger_id"]]
    ).fetchone()
    assert crossing["balance_after"] < 100 <= crossing["balance_after"] - crossing["delta"]


def test_monthly_cap_counts_pending_and_succeeded_not_failed(
    owner, app_conn, notifier, webhook_conn, admin_id, make_user
):
    user = make_user(balance=60)
    enable(app_conn, user, cap=PRICE * 2)
    # 1: succeeds
    cross(owner, admin_id, user)
    first = claim(notifier)
    pi = ev.new_id("pi")
    assert finish(notifier, first["id"], "processing", pi) == "processing"
    assert (
        apply(webhook_conn, topup_intent_event("succeeded", user, first["id"], pi))["outcome"]
        == "processed"
    )
    # 2: declined (does not count)
    cross(owner, admin_id, user)
    second = claim(notifier)
    assert finish(notifier, second["id"], "failed", ev.new_id("pi"), error="declined") == "failed"
    # 3: pending (counts): cap now reached
    cross(owner, admin_id, user)
    assert [t["status"] for t in topups(owner, user)] == ["succeeded", "failed", "pending"]
    third = claim(notifier)
    finish(notifier, third["id"], "processing", ev.new_id("pi"))
    # 4: over the cap -> nothing queued, even once the third is no longer open
    owner.execute(
        "update tokenbill.auto_topups set status = 'succeeded' where id = %s", [third["id"]]
    )
    cross(owner, admin_id, user)
    assert len(topups(owner, user)) == 3
    assert settings_of(owner, user)["month_committed_cents"] == PRICE * 2


def test_the_monthly_cap_holds_under_concurrency(
    database_url, owner, app_conn, admin_id, make_user
):
    """32 workers each cross the threshold and push their top-up to success at once."""
    user = make_user(balance=60)
    enable(app_conn, user, cap=PRICE * 3)
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with (
                connect_owner(database_url) as own,
                connect_as_role(database_url, "tokenbill_notifier") as note,
                connect_as_role(database_url, "tokenbill_webhook") as hook,
            ):
                barrier.wait()
                for _ in range(4):
                    with own.transaction():
                        own.execute("select tokenbill.lock_user(%s)", [user])
                        cross(own, admin_id, user)
                    row = claim(note)
                    if row:
                        pi = f"pi_cap_{row['id']}"
                        finish(note, row["id"], "processing", pi)
                        apply(hook, topup_intent_event("succeeded", user, row["id"], pi))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = topups(owner, user)
    assert sum(r["amount_cents"] for r in rows if r["status"] != "failed") <= PRICE * 3
    # how many fit depends on the interleaving; more than the cap never does
    assert 1 <= len(rows) <= 3 and {r["status"] for r in rows} == {"succeeded"}
    purchases = owner.execute(
        "select count(*) as n from api.ledger_entries where user_id = %s and kind = 'purchase'",
        [user],
    ).fetchone()["n"]
    assert purchases == len(rows)


def test_requires_action_then_completed_grants_once(
    owner, app_conn, notifier, webhook_conn, make_user
):
    user = make_user(balance=60)
    enable(app_conn, user)
    spend(owner, user, 20)
    row = claim(notifier)
    pi = ev.new_id("pi")
    url = "https://hooks.stripe.com/3d_secure_2/hosted?payment_intent=" + pi
    assert finish(notifier, row["id"], "requires_action", pi, url) == "requires_action"
    [notice] = topups(app_conn, user)
    assert (notice["status"], notice["action_url"]) == ("requires_action", url)
    assert claim(notifier) is None  # not sent again

    evt = topup_intent_event("succeeded", user, row["id"], pi)
    assert apply(webhook_conn, evt)["outcome"] == "processed"
    again = topup_intent_event("succeeded", user, row["id"], pi)  # another event id, same intent
    assert apply(webhook_conn, again)["outcome"] == "processed"
    assert balance_of(owner, user) == 40 + TOKENS
    [done] = topups(owner, user)
    assert (done["status"], done["action_url"]) == ("succeeded", None)


def test_webhook_faster_than_the_workers_commit_still_settles_the_topup(
    owner, app_conn, notifier, webhook_conn, make_user
):
    user = make_user(balance=60)
    enable(app_conn, user)
    spend(owner, user, 20)
    row = claim(notifier)
    pi = ev.new_id("pi")
    apply(webhook_conn, topup_intent_event("succeeded", user, row["id"], pi))
    assert finish(notifier, row["id"], "processing", pi) == "succeeded"
    assert balance_of(owner, user) == 40 + TOKENS


def test_three_declines_in_a_row_turn_auto_topup_off(
    owner, app_conn, notifier, webhook_conn, admin_id, make_user
):
    user = make_user(balance=60)
    enable(app_conn, user)
    for attempt in range(3):
        cross(owner, admin_id, user)
        row = claim(notifier)
        pi = ev.new_id("pi")
        finish(notifier, row["id"], "failed", pi, error="Your card was declined.")
        # Stripe's own payment_failed event for the same intent counts no second time
        apply(webhook_conn, topup_intent_event("failed", user, row["id"], pi))
        state = settings_of(owner, user)
        assert state["consecutive_failures"] == attempt + 1
        assert state["enabled"] is (attempt < 2)
    assert "turned off after 3 failed payments" in settings_of(owner, user)["disabled_reason"]
    cross(owner, admin_id, user)
    assert len(topups(owner, user)) == 3  # off: nothing more queued

    enable(app_conn, user)  # the user turns it back on: a fresh start
    state = settings_of(owner, user)
    assert (state["enabled"], state["consecutive_failures"], state["disabled_reason"]) == (
        True,
        0,
        None,
    )


def test_a_success_resets_the_failure_count(
    owner, app_conn, notifier, webhook_conn, admin_id, make_user
):
    user = make_user(balance=60)
    enable(app_conn, user)
    for outcome in ("failed", "failed", "ok", "failed"):
        cross(owner, admin_id, user)
        row = claim(notifier)
        pi = ev.new_id("pi")
        if outcome == "ok":
            finish(notifier, row["id"], "processing", pi)
            apply(webhook_conn, topup_intent_event("succeeded", user, row["id"], pi))
        else:
            finish(notifier, row["id"], "failed", pi, error="declined")
    state = settings_of(owner, user)
    assert (state["enabled"], state["consecutive_failures"]) == (True, 1)


def test_refund_of_an_auto_topup_claws_back(owner, app_conn, notifier, webhook_conn, make_user):
    user = make_user(balance=60)
    enable(app_conn, user)
    spend(owner, user, 20)
    row = claim(notifier)
    pi, ch = ev.new_id("pi"), ev.new_id("ch")
    finish(notifier, row["id"], "processing", pi)
    evt = topup_intent_event("succeeded", user, row["id"], pi)
    evt["data"]["object"]["latest_charge"] = ch
    apply(webhook_conn, evt)
    assert balance_of(owner, user) == 140
    assert (
        apply(webhook_conn, ev.charge_refunded(pi, PRICE, PRICE, charge=ch))["outcome"]
        == "processed"
    )
    assert balance_of(owner, user) == 40


def test_retry_keeps_the_row_queued_with_the_same_key_later(owner, app_conn, notifier, make_user):
    user = make_user(balance=60)
    enable(app_conn, user)
    spend(owner, user, 20)
    row = claim(notifier)
    assert finish(notifier, row["id"], "retry", error="Stripe unreachable") == "pending"
    assert claim(notifier) is None  # not due yet
    owner.execute(
        "update tokenbill.auto_topups set next_attempt_at = now() where id = %s", [row["id"]]
    )
    again = claim(notifier)
    assert (again["id"], again["idempotency_key"], again["attempts"]) == (
        row["id"],
        row["idempotency_key"],
        1,
    )


def test_turning_auto_topup_off_cancels_a_queued_topup(owner, app_conn, notifier, make_user):
    user = make_user(balance=60)
    enable(app_conn, user)
    spend(owner, user, 20)
    enable(app_conn, user, enabled=False)
    assert [t["status"] for t in topups(owner, user)] == ["canceled"]
    assert claim(notifier) is None


def test_claims_skip_rows_another_worker_holds(database_url, owner, app_conn, make_user):
    a, b = make_user(balance=60), make_user(balance=60)
    for user in (a, b):
        enable(app_conn, user)
        spend(owner, user, 20)
    with (
        connect_as_role(database_url, "tokenbill_notifier") as one,
        connect_as_role(database_url, "tokenbill_notifier") as two,
        one.transaction(),
        two.transaction(),
    ):
        first, second = claim(one), claim(two)
        assert first and second and first["id"] != second["id"]


@pytest.mark.parametrize(
    ("threshold", "cap", "package"),
    [(0, 1000, PACKAGE), (50, 100, PACKAGE), (50, 1000, "no_such_package"), (50, -1, PACKAGE)],
)
def test_bad_settings_are_refused(app_conn, make_user, threshold, cap, package):
    user = make_user()
    with pytest.raises(psycopg.Error) as info:
        enable(app_conn, user, threshold=threshold, cap=cap, package=package)
    assert info.value.sqlstate == "TB003"


def test_the_worker_role_cannot_grant_or_change_settings(notifier, make_user):
    user = make_user()
    for sql in (
        "select api.grant_for_payment('pi_x', %s::text, 'tokens_100', 500, 'usd')",
        "select api.set_auto_topup(%s, true, 10, 'tokens_100', 5000)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            notifier.execute(sql, [user])


def test_customer_ids_are_one_per_account(app_conn, make_user):
    a, b = make_user(), make_user()
    record = "select api.record_stripe_customer(%s, %s) as id"
    assert app_conn.execute(record, [a, "cus_A1"]).fetchone()["id"] == "cus_A1"
    assert app_conn.execute(record, [a, "cus_A2"]).fetchone()["id"] == "cus_A1"  # first wins
    with pytest.raises(psycopg.Error) as info:
        app_conn.execute(record, [b, "cus_A1"])
    assert info.value.sqlstate == "TB004"


def test_last_months_topups_do_not_count_against_this_months_cap(
    owner, app_conn, notifier, admin_id, make_user
):
    user = make_user(balance=60)
    enable(app_conn, user, cap=PRICE)
    cross(owner, admin_id, user)
    row = claim(notifier)
    finish(notifier, row["id"], "processing", ev.new_id("pi"))
    owner.execute(
        "update tokenbill.auto_topups set status = 'succeeded',"
        " month = (month - interval '1 month')::date where id = %s",
        [row["id"]],
    )
    cross(owner, admin_id, user)
    assert [t["status"] for t in topups(owner, user)] == ["succeeded", "pending"]
    cross(owner, admin_id, user)  # one in flight, and it fills this month's cap
    assert len(topups(owner, user)) == 2


@pytest.mark.parametrize("webhook_first", [False, True])
def test_authentication_required_failure_event_leaves_the_topup_waiting_for_the_user(
    owner, app_conn, notifier, webhook_conn, make_user, webhook_first
):
    """Stripe sends payment_intent.payment_failed for an off-session charge needing 3-D Secure."""
    user = make_user(balance=60)
    enable(app_conn, user)
    spend(owner, user, 20)
    row = claim(notifier)
    pi = ev.new_id("pi")
    failed = topup_intent_event("failed", user, row["id"], pi)
    failed["data"]["object"]["last_payment_error"] = {"code": "authentication_required"}
    if webhook_first:
        apply(webhook_conn, failed)
    assert finish(notifier, row["id"], "requires_action", pi) == "requires_action"
    if not webhook_first:
        apply(webhook_conn, failed)
    assert topups(owner, user)[0]["status"] == "requires_action"
    assert settings_of(owner, user)["consecutive_failures"] == 0

    apply(webhook_conn, topup_intent_event("succeeded", user, row["id"], pi))  # completed
    assert topups(owner, user)[0]["status"] == "succeeded"
    assert balance_of(owner, user) == 40 + TOKENS

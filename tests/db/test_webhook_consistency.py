"""Every grant path checks the Checkout Session tokenbill recorded; conflicts are recorded.

Attacks and accidents from issue 11: a PaymentIntent naming another user for a session
already linked to it, a second PaymentIntent for a paid session (was a unique violation and a
500 on every retry), disagreeing user ids inside one session, and events of the other mode.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.conftest import audit, balance_of
from tests.support import stripe_events as ev

HANDLE = "select * from api.handle_stripe_event(%s::jsonb, %s)"


def handle(conn, evt: dict[str, Any], livemode: bool | None = False) -> dict[str, Any]:
    return conn.execute(HANDLE, [json.dumps(evt), livemode]).fetchone()


def recorded_session(owner, user: uuid.UUID, package: str = "tokens_100") -> str:
    cs = ev.new_id("cs")
    owner.execute("select api.record_checkout_session(%s, %s, %s)", [cs, user, package])
    return cs


def payment(owner, intent: str) -> dict[str, Any] | None:
    return owner.execute(
        "select status, reason, user_id, checkout_session_id from api.purchases"
        " where payment_intent_id = %s",
        [intent],
    ).fetchone()


def test_intent_naming_another_user_for_a_linked_session_is_rejected(
    webhook_conn, owner, make_user
):
    alice, mallory = make_user(), make_user()
    cs, intent = recorded_session(owner, alice), ev.new_id("pi")
    # async payment: the session names its PaymentIntent before the money arrives
    pending = ev.checkout_session_completed(
        alice, "tokens_100", 500, cs=cs, pi=intent, payment_status="unpaid"
    )
    assert handle(webhook_conn, pending)["outcome"] == "processed"

    forged = ev.payment_intent_succeeded(mallory, "tokens_100", 500, pi=intent)
    result = handle(webhook_conn, forged)
    assert result["outcome"] == "rejected"
    assert f"does not match checkout session {cs}" in result["detail"]
    assert balance_of(owner, mallory) == 0
    assert payment(owner, intent)["status"] == "rejected"
    # the real session event then grants Alice, once
    paid = ev.checkout_session_async_payment_succeeded(alice, "tokens_100", 500, cs=cs, pi=intent)
    assert handle(webhook_conn, paid)["outcome"] == "processed"
    assert (balance_of(owner, alice), balance_of(owner, mallory)) == (100, 0)
    assert audit(owner) == []


def test_second_payment_intent_for_a_paid_session_is_rejected_not_a_retry_loop(
    webhook_conn, owner, make_user
):
    alice = make_user()
    cs, first, second = recorded_session(owner, alice), ev.new_id("pi"), ev.new_id("pi")
    evt = ev.checkout_session_completed(alice, "tokens_100", 500, cs=cs, pi=first)
    assert handle(webhook_conn, evt)["outcome"] == "processed"

    again = ev.checkout_session_completed(alice, "tokens_100", 500, cs=cs, pi=second)
    result = handle(webhook_conn, again)  # was: unique violation, 500 on every delivery
    assert result["outcome"] == "rejected"
    assert f"already paid by {first}" in result["detail"]
    stored = owner.execute(
        "select outcome, detail from api.stripe_events where id = %s", [again["id"]]
    ).fetchone()
    assert stored["outcome"] == "rejected"
    assert balance_of(owner, alice) == 100

    late = ev.payment_intent_succeeded(alice, "tokens_100", 500, pi=second)
    assert handle(webhook_conn, late)["outcome"] == "rejected"
    assert balance_of(owner, alice) == 100
    assert payment(owner, second)["status"] == "rejected"
    assert audit(owner) == []


def test_conflicting_user_ids_in_one_session_are_rejected(webhook_conn, owner, make_user):
    alice, mallory = make_user(), make_user()
    obj = ev.checkout_session_object(alice, "tokens_100", 500)
    obj["metadata"]["user_id"] = str(mallory)
    result = handle(webhook_conn, ev.event("checkout.session.completed", obj))
    assert result["outcome"] == "rejected"
    assert "conflicting user ids" in result["detail"]
    assert balance_of(owner, alice) == balance_of(owner, mallory) == 0


def test_an_intent_for_a_granted_payment_naming_someone_else_is_recorded(
    webhook_conn, owner, make_user
):
    alice, mallory = make_user(), make_user()
    intent = ev.new_id("pi")
    handle(webhook_conn, ev.checkout_session_completed(alice, "tokens_100", 500, pi=intent))
    result = handle(
        webhook_conn, ev.payment_intent_succeeded(mallory, "tokens_100", 500, pi=intent)
    )
    assert result["outcome"] == "rejected"
    assert "conflict" in result["detail"]
    assert (balance_of(owner, alice), balance_of(owner, mallory)) == (100, 0)


def test_event_of_the_other_mode_is_recorded_not_applied(webhook_conn, owner, make_user):
    user = make_user()
    evt = ev.payment_intent_succeeded(user, "tokens_100", 500)  # livemode false
    result = handle(webhook_conn, evt, livemode=True)  # a live key
    assert result["outcome"] == "rejected"
    assert "livemode mismatch" in result["detail"]
    assert balance_of(owner, user) == 0
    stored = owner.execute("select outcome from api.stripe_events where id = %s", [evt["id"]])
    assert stored.fetchone()["outcome"] == "rejected"

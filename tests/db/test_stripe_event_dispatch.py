"""0022's lean webhook keeps the inbox's guarantees: one delivery of an event at a time, a
rolled-back attempt applied again, every payments rule still enforced, handlers per type.

Adversaries: Stripe delivering one event twice at once (two workers), a crashed worker whose
transaction rolled back, and a compromised or buggy writer putting a row the payments CHECKs
forbid.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

from tests.conftest import audit, balance_of, connect_as_role
from tests.support import stripe_events as ev

HANDLE = "select * from api.handle_stripe_event(%s::jsonb, false)"


def paid_session_event(owner, user) -> dict[str, Any]:
    cs = ev.new_id("cs")
    owner.execute("select api.record_checkout_session(%s, %s, %s)", [cs, user, "tokens_100"])
    return ev.checkout_session_completed(user, "tokens_100", 500, cs=cs)


def test_a_second_delivery_waits_for_the_first_then_is_a_duplicate(database_url, owner, make_user):
    alice = make_user()
    evt = paid_session_event(owner, alice)
    first = connect_as_role(database_url, "tokenbill_webhook")
    second = connect_as_role(database_url, "tokenbill_webhook")
    outcomes: list[str] = []
    with first, second:
        first.autocommit = False
        assert first.execute(HANDLE, [json.dumps(evt)]).fetchone()["outcome"] == "processed"
        # the first delivery has not committed: the second must wait, not apply it again
        waiter = threading.Thread(
            target=lambda: outcomes.append(
                second.execute(HANDLE, [json.dumps(evt)]).fetchone()["outcome"]
            )
        )
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and outcomes == []
        first.commit()
        waiter.join(10)
    assert outcomes == ["duplicate"]
    assert balance_of(owner, alice) == 100
    assert audit(owner) == []


def test_a_delivery_whose_first_attempt_rolled_back_is_applied(database_url, owner, make_user):
    alice = make_user()
    evt = paid_session_event(owner, alice)
    with (
        connect_as_role(database_url, "tokenbill_webhook") as crashed,
        connect_as_role(database_url, "tokenbill_webhook") as retry,
    ):
        crashed.autocommit = False
        crashed.execute(HANDLE, [json.dumps(evt)])
        crashed.rollback()  # the worker died before COMMIT: nothing happened
        crashed.execute(
            "select api.record_stripe_event_failure(%s::jsonb, 'worker killed')",
            [json.dumps(evt)],
        )
        crashed.commit()
        assert retry.execute(HANDLE, [json.dumps(evt)]).fetchone()["outcome"] == "processed"
    row = owner.execute(
        "select outcome, attempts from tokenbill.stripe_events where id = %s", [evt["id"]]
    ).fetchone()
    assert row == {"outcome": "processed", "attempts": 2}
    assert balance_of(owner, alice) == 100


def test_the_inbox_row_is_written_with_its_outcome(webhook_conn, owner, make_user):
    evt = paid_session_event(owner, make_user())
    webhook_conn.execute(HANDLE, [json.dumps(evt)])
    row = owner.execute(
        "select outcome, detail, processed_at is not null as done, attempts"
        " from tokenbill.stripe_events where id = %s",
        [evt["id"]],
    ).fetchone()
    assert row == {
        "outcome": "processed",
        "detail": "granted 100 tokens",
        "done": True,
        "attempts": 1,
    }


@pytest.mark.parametrize(
    "assignment",
    [
        "status = 'refunded'",
        "tokens_granted = -1",
        "tokens_clawed = tokens_granted + 1",
        "tokens_clawed = -1",
        "refunded_cents = -1",
        "subtotal_cents = -1",
        "discount_cents = -1",
        "tax_cents = -1",
        "invoice_url = 'http://invoice.test/1'",
        "invoice_pdf_url = 'javascript:alert(1)'",
    ],
)
def test_every_payments_rule_is_still_enforced(owner, make_user, assignment):
    pi = ev.new_id("pi")
    owner.execute("insert into tokenbill.payments (payment_intent_id) values (%s)", [pi])
    with pytest.raises(psycopg.errors.CheckViolation):
        owner.execute(
            f"update tokenbill.payments set {assignment} where payment_intent_id = %s", [pi]
        )


def test_the_dispatcher_applies_nothing_itself(owner):
    """Each event type's effect lives in its tokenbill handler, so a later migration replaces
    that handler, not the webhook (the dispatcher writes only the inbox)."""
    source = owner.execute(
        "select pg_get_functiondef('api.handle_stripe_event(jsonb,boolean)'::regprocedure) as src"
    ).fetchone()["src"]
    for table in ("payments", "checkout_sessions", "ledger", "disputes", "users"):
        assert f"tokenbill.{table}" not in source
    assert "tokenbill.stripe_events" in source

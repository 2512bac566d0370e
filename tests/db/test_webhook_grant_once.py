"""0025: a new payment's row is written once, complete; an existing one is locked and updated.

Adversaries: Stripe delivering two different events of one new payment at the same moment
(checkout.session.completed and payment_intent.succeeded: different event ids, so the inbox's
per-event lock does not order them), and a worker that crashes between the two.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import audit, balance_of, connect_as_role
from tests.support import stripe_events as ev

HANDLE = "select * from api.handle_stripe_event(%s::jsonb, false)"
ROW_WRITES = (
    "select n_tup_ins as inserted, n_tup_upd as updated from pg_stat_xact_user_tables"
    " where relid = 'tokenbill.payments'::regclass"
)


def recorded_session(owner, user) -> str:
    cs = ev.new_id("cs")
    owner.execute("select api.record_checkout_session(%s, %s, %s)", [cs, user, "tokens_100"])
    return cs


def purchases(owner, pi: str) -> int:
    return owner.execute(
        "select count(*) as n from tokenbill.ledger"
        " where kind = 'purchase' and payment_intent_id = %s",
        [pi],
    ).fetchone()["n"]


@pytest.mark.parametrize(
    ("amount", "status"), [(500, "granted"), (499, "rejected")], ids=["grant", "rejection"]
)
def test_a_new_payment_is_one_row_version(database_url, owner, make_user, amount, status):
    """One INSERT, no UPDATE of the row it just inserted (0022 wrote it two or three times)."""
    alice = make_user()
    evt = ev.checkout_session_completed(
        alice, "tokens_100", amount, cs=recorded_session(owner, alice)
    )
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.execute(HANDLE, [json.dumps(evt)])
        assert conn.execute(ROW_WRITES).fetchone() == {"inserted": 1, "updated": 0}
        conn.commit()
    pi = evt["data"]["object"]["payment_intent"]
    row = owner.execute(
        "select status, user_id, package_code, checkout_session_id, amount_cents, tokens_granted"
        " from tokenbill.payments where payment_intent_id = %s",
        [pi],
    ).fetchone()
    assert row == {
        "status": status,
        "user_id": alice,
        "package_code": "tokens_100",
        "checkout_session_id": evt["data"]["object"]["id"],
        "amount_cents": amount,
        "tokens_granted": 100 if status == "granted" else 0,
    }
    assert balance_of(owner, alice) == (100 if status == "granted" else 0)


def _race(database_url, first_evt, second_evt, first_commits: bool) -> dict[str, Any]:
    """Apply ``first_evt`` without committing, start ``second_evt`` meanwhile, then end the
    first; returns the second's row."""
    first = connect_as_role(database_url, "tokenbill_webhook")
    second = connect_as_role(database_url, "tokenbill_webhook")
    rows: list[dict[str, Any]] = []
    with first, second:
        first.autocommit = False
        assert first.execute(HANDLE, [json.dumps(first_evt)]).fetchone()["outcome"] == "processed"
        waiter = threading.Thread(
            target=lambda: rows.append(second.execute(HANDLE, [json.dumps(second_evt)]).fetchone())
        )
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and rows == []  # waits on the first one's new row
        if first_commits:
            first.commit()
        else:
            first.rollback()
        waiter.join(10)
    assert len(rows) == 1
    return rows[0]


def test_two_events_of_one_new_payment_at_once_grant_once(database_url, owner, make_user):
    alice = make_user()
    pi = ev.new_id("pi")
    session_evt = ev.checkout_session_completed(
        alice, "tokens_100", 500, pi=pi, cs=recorded_session(owner, alice)
    )
    intent_evt = ev.payment_intent_succeeded(alice, "tokens_100", 500, pi=pi)
    second = _race(database_url, session_evt, intent_evt, first_commits=True)
    assert (second["outcome"], second["detail"]) == ("processed", "already_granted 100 tokens")
    assert purchases(owner, pi) == 1
    assert balance_of(owner, alice) == 100
    assert audit(owner) == []


def test_when_the_first_event_rolls_back_the_second_grants(database_url, owner, make_user):
    alice = make_user()
    pi = ev.new_id("pi")
    intent_evt = ev.payment_intent_succeeded(alice, "tokens_100", 500, pi=pi)
    session_evt = ev.checkout_session_completed(
        alice, "tokens_100", 500, pi=pi, cs=recorded_session(owner, alice)
    )
    second = _race(database_url, intent_evt, session_evt, first_commits=False)
    assert (second["outcome"], second["detail"]) == ("processed", "granted 100 tokens")
    row = owner.execute(
        "select status, checkout_session_id from tokenbill.payments where payment_intent_id = %s",
        [pi],
    ).fetchone()
    assert row == {"status": "granted", "checkout_session_id": session_evt["data"]["object"]["id"]}
    assert purchases(owner, pi) == 1
    assert balance_of(owner, alice) == 100
    assert audit(owner) == []

"""Refunds and disputes through the webhook: tokens taken back once, given back when won.

Every test ends with an empty ledger audit (autouse fixture below).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import audit, balance_of
from tests.support import stripe_events as ev
from tests.support.webhooks import deliver, purchase


@pytest.fixture(autouse=True)
def ledger_stays_consistent(owner) -> Iterator[None]:
    yield
    assert audit(owner) == []


# --------------------------------------------------------------------------------------------
# Refunds and disputes
# --------------------------------------------------------------------------------------------
def paid(client, owner, make_user, package="tokens_600", amount=2000) -> tuple[Any, str, str]:
    """A user who bought ``package``: (user, payment intent, charge)."""
    user = make_user()
    pi, ch = ev.new_id("pi"), ev.new_id("ch")
    evt = ev.payment_intent_succeeded(user, package, amount, pi=pi, charge=ch)
    assert deliver(client, evt).get_json()["outcome"] == "processed"
    return user, pi, ch


def test_partial_then_full_refund_takes_tokens_back_once(client, owner, make_user):
    user, pi, ch = paid(client, owner, make_user)
    half = ev.charge_refunded(pi, 2000, 1000, charge=ch)

    assert deliver(client, half).status_code == 200
    assert balance_of(owner, user) == 300
    assert purchase(owner, pi)["display_status"] == "partially_refunded"
    assert deliver(client, half).get_json()["outcome"] == "duplicate"

    full = ev.charge_refunded(pi, 2000, 2000, charge=ch, previously_refunded=1000)
    assert deliver(client, full).status_code == 200
    assert balance_of(owner, user) == 0
    assert purchase(owner, pi)["display_status"] == "refunded"
    # A late copy of the partial refund (another event id, older total) moves nothing.
    late = ev.charge_refunded(pi, 2000, 1000, charge=ch)
    assert deliver(client, late).status_code == 200
    assert balance_of(owner, user) == 0


def test_refund_from_the_shared_fixture_shape(client, owner, make_user):
    evt = ev.shared_fixture("charge.refunded")
    user, pi, ch = paid(client, owner, make_user, "tokens_100", 500)
    evt["id"] = ev.new_id("evt")
    evt["data"]["object"].update(
        id=ch, payment_intent=pi, amount=500, amount_captured=500, amount_refunded=500
    )
    assert deliver(client, evt).get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 0


def test_dispute_won_gives_the_tokens_back(client, owner, make_user):
    user, pi, ch = paid(client, owner, make_user)
    dp = ev.new_id("dp")
    created = ev.dispute("created", pi, 2000, charge=ch, dispute_id=dp, status="needs_response")
    assert deliver(client, created).get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 0
    assert purchase(owner, pi)["display_status"] == "disputed"

    won = ev.dispute("closed", pi, 2000, charge=ch, dispute_id=dp, status="won")
    assert "given back" in deliver(client, won).get_json()["detail"]
    assert balance_of(owner, user) == 600
    assert purchase(owner, pi)["display_status"] == "paid"


def test_dispute_lost_keeps_the_tokens_taken(client, owner, make_user):
    user, pi, ch = paid(client, owner, make_user)
    dp = ev.new_id("dp")
    deliver(client, ev.dispute("created", pi, 2000, charge=ch, dispute_id=dp))
    lost = ev.dispute("closed", pi, 2000, charge=ch, dispute_id=dp, status="lost")
    assert deliver(client, lost).status_code == 200
    # A late 'updated' cannot reopen a closed dispute.
    late = ev.dispute("updated", pi, 2000, charge=ch, dispute_id=dp, status="under_review")
    assert deliver(client, late).status_code == 200
    assert balance_of(owner, user) == 0
    status = owner.execute("select status from api.disputes where id = %s", [dp]).fetchone()
    assert status["status"] == "lost"


def test_refund_for_an_unknown_charge_is_rejected_not_retried(client, owner):
    evt = ev.charge_refunded(None, 500, 500)  # type: ignore[arg-type]
    response = deliver(client, evt)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "rejected"

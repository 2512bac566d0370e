"""db/edge-functions/stripe-webhook under the real Deno, with real signed events, into real PG.

The same cases as tests/webapp/test_webhooks.py against the Supabase Edge Function: the two
entry points must agree on every status code and every balance. One Deno process serves the
module; tests that need another configuration (dead database, wrong role) start their own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import requests
from psycopg.conninfo import make_conninfo

from tests.conftest import WEBHOOK_SECRET, balance_of
from tests.support import stripe_events as ev
from tests.support.edge_functions import Served, postgres_url, serve_function
from tests.webapp.test_webhooks import event_row, grants_for, purchase

pytestmark = pytest.mark.usefixtures("ledger_stays_consistent")


FUNCTION = "stripe-webhook"
# What the answer says for each refused delivery (the rest are signature failures).
REASONS = {
    "missing": "missing signature",
    "malformed": "malformed payload",
    "not_an_object": "malformed payload",
}


def settings(database_url: str, **overrides: str) -> dict[str, str]:
    return {
        "TOKENBILL_DATABASE_URL": postgres_url(database_url),
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TOKENBILL_DB_TIMEOUT_SECONDS": "2",
        **overrides,
    }


@pytest.fixture(scope="module")
def webhook(database_url: str) -> Iterator[Served]:
    with serve_function(FUNCTION, **settings(database_url)) as served:
        yield served


def post(url: str, body: bytes, header: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return requests.post(url, data=body, headers=headers, timeout=30)


def deliver(served: Served, evt: dict[str, Any], timestamp: int | None = None) -> requests.Response:
    return post(served.url, *ev.signed(evt, WEBHOOK_SECRET, timestamp))


# --------------------------------------------------------------------------------------------
# Verification: the official stripe npm SDK with the SubtleCrypto provider
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tamper", ev.unverifiable_deliveries(WEBHOOK_SECRET), ids=lambda t: t.__name__
)
def test_unverifiable_deliveries_are_refused_and_change_nothing(webhook, owner, make_user, tamper):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)

    response = post(webhook.url, *tamper(evt))

    assert response.status_code == 400
    assert response.json()["error"] == REASONS.get(tamper.__name__, "invalid signature")
    assert event_row(owner, evt["id"]) is None
    assert balance_of(owner, user) == 0


def test_a_signature_just_inside_the_tolerance_is_accepted(webhook, owner, make_user):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    assert deliver(webhook, evt, int(time.time()) - 280).status_code == 200
    assert balance_of(owner, user) == 100


def test_signed_event_without_an_id_is_refused(webhook):
    evt = {"object": "event", "type": "charge.succeeded", "data": {"object": {}}}
    assert deliver(webhook, evt).status_code == 400


def test_oversize_body_is_refused_with_413_before_verification(webhook, owner, make_user):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    evt["data"]["object"]["padding"] = "x" * (1024 * 1024)

    response = deliver(webhook, evt)

    assert response.status_code == 413
    assert event_row(owner, evt["id"]) is None
    assert balance_of(owner, user) == 0


def test_only_post_is_served(webhook):
    assert requests.get(webhook.url, timeout=10).status_code == 405


# --------------------------------------------------------------------------------------------
# Granting exactly once, for both event types
# --------------------------------------------------------------------------------------------
def test_checkout_completed_grants_and_a_redelivery_is_a_duplicate(webhook, owner, make_user):
    user = make_user(balance=7)
    evt = ev.checkout_session_completed(user, "tokens_250", 1000)

    first = deliver(webhook, evt)
    again = deliver(webhook, evt)

    assert first.status_code == 200
    assert first.json() == {
        "received": True,
        "outcome": "processed",
        "detail": "granted 250 tokens",
    }
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    assert balance_of(owner, user) == 257
    pi = evt["data"]["object"]["payment_intent"]
    assert purchase(owner, pi)["display_status"] == "paid"
    assert grants_for(owner, pi) == 1


@pytest.mark.parametrize("order", ["session_first", "intent_first"])
def test_session_and_payment_intent_events_grant_once_in_either_order(
    webhook, owner, make_user, order
):
    user = make_user()
    pi = ev.new_id("pi")
    completed = ev.checkout_session_completed(user, "tokens_600", 2000, pi=pi)
    succeeded = ev.payment_intent_succeeded(user, "tokens_600", 2000, pi=pi)
    events = [completed, succeeded] if order == "session_first" else [succeeded, completed]

    replies = [deliver(webhook, e) for e in events]

    assert [r.status_code for r in replies] == [200, 200]
    assert [r.json()["outcome"] for r in replies] == ["processed", "processed"]
    assert balance_of(owner, user) == 600
    assert grants_for(owner, pi) == 1


def test_concurrent_deliveries_of_both_event_types_grant_once(webhook, owner, make_user):
    user = make_user()
    pi = ev.new_id("pi")
    bodies = [
        ev.signed(evt, WEBHOOK_SECRET)
        for evt in (
            ev.checkout_session_completed(user, "tokens_100", 500, pi=pi),
            ev.payment_intent_succeeded(user, "tokens_100", 500, pi=pi),
        )
        for _ in range(6)
    ]

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        responses = list(pool.map(lambda item: post(webhook.url, *item), bodies))

    assert {r.status_code for r in responses} == {200}
    assert sorted(r.json()["outcome"] for r in responses).count("processed") == 2
    assert balance_of(owner, user) == 100
    assert grants_for(owner, pi) == 1


# --------------------------------------------------------------------------------------------
# Refunds, rejections, events we do not act on
# --------------------------------------------------------------------------------------------
def test_partial_then_full_refund_takes_tokens_back_once(webhook, owner, make_user):
    user = make_user()
    pi, ch = ev.new_id("pi"), ev.new_id("ch")
    bought = deliver(
        webhook, ev.payment_intent_succeeded(user, "tokens_600", 2000, pi=pi, charge=ch)
    )
    assert bought.json()["outcome"] == "processed"

    half = ev.charge_refunded(pi, 2000, 1000, charge=ch)
    assert deliver(webhook, half).status_code == 200
    assert balance_of(owner, user) == 300
    assert deliver(webhook, half).json()["outcome"] == "duplicate"

    full = ev.charge_refunded(pi, 2000, 2000, charge=ch, previously_refunded=1000)
    assert deliver(webhook, full).status_code == 200
    assert balance_of(owner, user) == 0
    assert purchase(owner, pi)["display_status"] == "refunded"


def test_amount_mismatch_is_rejected_and_visible(webhook, owner, make_user):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_600", 500)

    reply = deliver(webhook, evt).json()

    assert reply["outcome"] == "rejected" and "amount mismatch" in reply["detail"]
    assert event_row(owner, evt["id"])["outcome"] == "rejected"
    assert balance_of(owner, user) == 0


def test_unknown_event_type_is_acknowledged_and_ignored(webhook, owner):
    evt = ev.event("customer.created", {"id": "cus_123", "object": "customer"})
    response = deliver(webhook, evt)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert event_row(owner, evt["id"])["outcome"] == "ignored"


def test_the_secret_never_reaches_the_log(webhook, make_user):
    deliver(webhook, ev.checkout_session_completed(make_user(), "tokens_100", 500))
    post(webhook.url, *ev.unverifiable_deliveries(WEBHOOK_SECRET)[0](ev.event("x.y", {})))
    assert "stripe event handled" in webhook.wait_for("stripe event handled")
    assert WEBHOOK_SECRET not in webhook.log()


# --------------------------------------------------------------------------------------------
# Database trouble and misconfiguration: 5xx so Stripe retries, never 200 with a lost grant
# --------------------------------------------------------------------------------------------
def test_database_down_answers_500_then_the_retry_grants(webhook, database_url, owner, make_user):
    dead = postgres_url(make_conninfo(database_url, port=1))
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)

    with serve_function(FUNCTION, **settings(database_url, TOKENBILL_DATABASE_URL=dead)) as down:
        refused = deliver(down, evt)

    assert refused.status_code == 500
    assert event_row(owner, evt["id"]) is None
    assert balance_of(owner, user) == 0
    retried = deliver(webhook, evt)
    assert retried.status_code == 200 and retried.json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100


def test_lock_timeout_answers_500_records_the_failure_then_the_retry_grants(
    database_url, owner, make_user
):
    """A real error mid-transaction: the user's row is locked by another transaction."""
    impatient = postgres_url(database_url, lock_timeout="200")
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)

    with serve_function(FUNCTION, **settings(database_url, TOKENBILL_DATABASE_URL=impatient)) as fn:
        with psycopg.connect(database_url) as blocker:
            blocker.execute("select 1 from tokenbill.users where id = %s for update", [user])
            refused = deliver(fn, evt)
            blocker.rollback()
        assert refused.status_code == 500
        failed = event_row(owner, evt["id"])
        assert failed["outcome"] == "failed" and "lock" in failed["detail"]
        assert balance_of(owner, user) == 0

        retried = deliver(fn, evt)

    assert retried.json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100
    assert event_row(owner, evt["id"])["attempts"] == 2


def test_acting_as_the_web_role_applies_nothing(database_url, owner, make_user):
    """Since 0013 only tokenbill_webhook applies Stripe events: a function misconfigured to act
    as the web role (or a compromised web login) cannot grant, and fails closed with 500."""
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    env = settings(database_url, TOKENBILL_WEBHOOK_ROLE="tokenbill_app")
    with serve_function(FUNCTION, **env) as fn:
        response = deliver(fn, evt)
        denied = "permission denied for function handle_stripe_event"
        assert denied in fn.wait_for(denied)
    assert response.status_code == 500
    assert balance_of(owner, user) == 0
    assert event_row(owner, evt["id"]) is None  # it may not even record the failure


@pytest.mark.parametrize(
    ("key", "outcome"),
    [
        ("sk_live_", "rejected"),
        ("rk_live_", "rejected"),
        ("sk_test_", "processed"),
        ("", "processed"),
    ],
)
def test_the_event_mode_must_match_the_stripe_key(database_url, owner, make_user, key, outcome):
    """A test-mode event reaching a live deployment (or the reverse) is recorded, never applied;
    without a key the mode is not checked (as webapp/config.py's stripe_livemode)."""
    user = make_user()
    evt = ev.payment_intent_succeeded(user, "tokens_600", 2000)  # livemode false: a test event
    secret_key = key + "0" * 24 if key else ""
    with serve_function(FUNCTION, **settings(database_url, STRIPE_SECRET_KEY=secret_key)) as fn:
        response = deliver(fn, evt)
        log = fn.log()
    if secret_key:
        assert secret_key not in log  # read for its mode only, never logged

    assert response.status_code == 200 and response.json()["outcome"] == outcome
    assert event_row(owner, evt["id"])["outcome"] == outcome
    if outcome == "rejected":
        assert "livemode mismatch" in response.json()["detail"]
        assert balance_of(owner, user) == 0
    else:
        assert balance_of(owner, user) == 600


@pytest.mark.parametrize("exists", [True, False], ids=["role_without_grants", "missing_role"])
def test_the_function_acts_as_the_configured_role(database_url, owner, make_user, exists):
    """A role that may not call the api cannot grant: the setting is really used, and a
    misconfigured one fails closed with 500 (Stripe retries once it is fixed), never 400."""
    role = f"tokenbill_nobody_{uuid.uuid4().hex[:8]}"
    if exists:
        owner.execute(f"create role {role} nologin")
    try:
        user = make_user()
        evt = ev.checkout_session_completed(user, "tokens_100", 500)
        env = settings(database_url, TOKENBILL_WEBHOOK_ROLE=role)
        with serve_function(FUNCTION, **env) as fn:
            response = deliver(fn, evt)
        assert response.status_code == 500
        assert balance_of(owner, user) == 0
        assert event_row(owner, evt["id"]) is None  # could not even record the failure
    finally:
        owner.execute(f"drop role if exists {role}")


def test_missing_webhook_secret_refuses_everything(database_url, owner, make_user):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    with serve_function(FUNCTION, **settings(database_url, STRIPE_WEBHOOK_SECRET="")) as fn:
        response = post(fn.url, *ev.signed(evt, ""))
        assert "STRIPE_WEBHOOK_SECRET is not set" in fn.wait_for("STRIPE_WEBHOOK_SECRET is not set")
    assert response.status_code == 500
    assert event_row(owner, evt["id"]) is None

"""POST /api/webhook/stripe with really signed events, verified by the stripe SDK, into real PG.

Every test ends with an empty ledger audit (autouse fixture below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import requests
from flask import Flask
from psycopg.conninfo import make_conninfo

from tests.conftest import WEBHOOK_SECRET, balance_of
from tests.support import stripe_events as ev
from tests.support.servers import serve
from tests.support.webhooks import WEBHOOK, deliver, event_row, grants_for, purchase


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tamper", ev.unverifiable_deliveries(WEBHOOK_SECRET), ids=lambda t: t.__name__
)
def test_unverifiable_deliveries_are_refused_and_change_nothing(client, owner, make_user, tamper):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    body, header = tamper(evt)
    headers = {"Stripe-Signature": header} if header else {}

    response = client.post(WEBHOOK, data=body, headers=headers)

    assert response.status_code == 400
    assert response.is_json and "error" in response.get_json()
    assert event_row(owner, evt["id"]) is None
    assert balance_of(owner, user) == 0


pytestmark = pytest.mark.usefixtures("ledger_stays_consistent")


def test_signed_event_without_an_id_is_refused(client, owner):
    evt = {"object": "event", "type": "charge.succeeded", "data": {"object": {}}}
    assert deliver(client, evt).status_code == 400


def test_missing_webhook_secret_refuses_everything(make_app, owner, make_user, caplog):
    client = make_app(STRIPE_WEBHOOK_SECRET="").test_client()
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    response = deliver(client, evt, secret="")
    assert response.status_code == 500
    assert "STRIPE_WEBHOOK_SECRET is not set" in caplog.text
    assert event_row(owner, evt["id"]) is None


def test_webhook_needs_no_csrf_token(make_app, owner, make_user):
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    response = deliver(client, evt)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100


# --------------------------------------------------------------------------------------------
# Granting exactly once
# --------------------------------------------------------------------------------------------
def test_checkout_completed_grants_and_a_redelivery_is_a_duplicate(client, owner, make_user):
    user = make_user(balance=7)
    evt = ev.checkout_session_completed(user, "tokens_250", 1000)

    first = deliver(client, evt)
    again = deliver(client, evt)

    assert first.status_code == 200
    assert first.get_json() == {
        "received": True,
        "outcome": "processed",
        "detail": "granted 250 tokens",
    }
    assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"
    assert balance_of(owner, user) == 257
    pi = evt["data"]["object"]["payment_intent"]
    assert purchase(owner, pi)["display_status"] == "paid"
    assert grants_for(owner, pi) == 1


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The app behind a real threaded HTTP server on a free port."""
    with serve(app) as url:
        yield url


def post_concurrently(url: str, bodies: list[tuple[bytes, str]]) -> list[requests.Response]:
    """POST every body at once (a barrier releases all threads together)."""
    barrier = threading.Barrier(len(bodies))

    def send(item: tuple[bytes, str]) -> requests.Response:
        body, header = item
        barrier.wait()
        return requests.post(
            url + WEBHOOK, data=body, headers={"Stripe-Signature": header}, timeout=60
        )

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies))


def test_fifty_concurrent_deliveries_of_one_event_grant_once(live_server, owner, make_user):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    body, header = ev.signed(evt, WEBHOOK_SECRET)

    responses = post_concurrently(live_server, [(body, header)] * 50)

    assert [r.status_code for r in responses] == [200] * 50
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes == ["duplicate"] * 49 + ["processed"]
    assert balance_of(owner, user) == 100
    assert grants_for(owner, evt["data"]["object"]["payment_intent"]) == 1


@pytest.mark.parametrize("order", ["session_first", "intent_first"])
def test_session_and_payment_intent_events_grant_once_in_either_order(
    client, owner, make_user, order
):
    user = make_user()
    pi = ev.new_id("pi")
    completed = ev.checkout_session_completed(user, "tokens_600", 2000, pi=pi)
    succeeded = ev.payment_intent_succeeded(user, "tokens_600", 2000, pi=pi)
    events = [completed, succeeded] if order == "session_first" else [succeeded, completed]

    replies = [deliver(client, e).get_json() for e in events]

    assert [r["outcome"] for r in replies] == ["processed", "processed"]
    assert replies[0]["detail"] == "granted 600 tokens"
    assert replies[1]["detail"] == "already_granted 600 tokens"
    assert balance_of(owner, user) == 600
    assert grants_for(owner, pi) == 1
    assert purchase(owner, pi)["checkout_session_id"] == completed["data"]["object"]["id"]


def test_session_and_payment_intent_events_concurrently_grant_once(live_server, owner, make_user):
    user = make_user()
    pis = [ev.new_id("pi") for _ in range(5)]
    bodies = []
    for pi in pis:
        for evt in (
            ev.checkout_session_completed(user, "tokens_100", 500, pi=pi),
            ev.payment_intent_succeeded(user, "tokens_100", 500, pi=pi),
        ):
            bodies += [ev.signed(evt, WEBHOOK_SECRET)] * 2

    responses = post_concurrently(live_server, bodies)

    assert {r.status_code for r in responses} == {200}
    assert balance_of(owner, user) == 500
    assert [grants_for(owner, pi) for pi in pis] == [1] * 5


def test_payment_intent_succeeded_from_the_shared_fixture(client, owner, make_user):
    """A captured Stripe CLI event, with the metadata tokenbill sets."""
    evt = ev.shared_fixture("payment_intent.succeeded")
    user = make_user()
    pi = ev.new_id("pi")
    evt["id"] = ev.new_id("evt")
    evt["data"]["object"].update(id=pi, metadata={"user_id": str(user), "package": "tokens_600"})

    reply = deliver(client, evt).get_json()

    assert reply["outcome"] == "processed"
    assert balance_of(owner, user) == 600  # amount_received 2000 usd = tokens_600


# --------------------------------------------------------------------------------------------
# Asynchronous payment methods
# --------------------------------------------------------------------------------------------
def test_async_payment_grants_only_when_it_succeeds(client, owner, make_user):
    user = make_user()
    pi, cs = ev.new_id("pi"), ev.new_id("cs")
    pending = ev.checkout_session_completed(
        user, "tokens_100", 500, pi=pi, cs=cs, payment_status="unpaid"
    )
    reply = deliver(client, pending).get_json()
    assert reply["outcome"] == "processed" and "pending" in reply["detail"]
    assert balance_of(owner, user) == 0

    cleared = ev.checkout_session_async_payment_succeeded(user, "tokens_100", 500, pi=pi, cs=cs)
    assert deliver(client, cleared).get_json()["detail"] == "granted 100 tokens"
    assert balance_of(owner, user) == 100


def test_async_payment_failure_is_recorded_without_a_grant(client, owner, make_user):
    user = make_user()
    pi, cs = ev.new_id("pi"), ev.new_id("cs")
    deliver(
        client,
        ev.checkout_session_completed(
            user, "tokens_100", 500, pi=pi, cs=cs, payment_status="unpaid"
        ),
    )
    failed = ev.checkout_session_async_payment_failed(user, "tokens_100", 500, pi=pi, cs=cs)

    reply = deliver(client, failed).get_json()

    assert reply["outcome"] == "processed" and "failed" in reply["detail"]
    assert purchase(owner, pi)["display_status"] == "failed"
    assert balance_of(owner, user) == 0
    assert event_row(owner, failed["id"])["outcome"] == "processed"


def test_expired_session_grants_nothing(client, owner, make_user):
    user = make_user()
    evt = ev.checkout_session_expired(user, "tokens_100", 500)
    assert deliver(client, evt).get_json()["detail"] == "session expired"
    assert balance_of(owner, user) == 0


def test_payment_intent_failure_is_recorded(client, owner, make_user):
    user = make_user()
    evt = ev.payment_intent_payment_failed(user, "tokens_100", 500)
    assert deliver(client, evt).get_json()["detail"] == "payment failure recorded"
    row = purchase(owner, evt["data"]["object"]["id"])
    # who tried to buy what comes from our metadata (0015): admins and the buyer can see it
    assert (row["status"], row["user_id"], row["package_code"]) == ("failed", user, "tokens_100")
    assert (row["amount_cents"], row["currency"], row["tokens_granted"]) == (500, "usd", 0)
    assert row["reason"] == "Your card was declined."


def test_failure_naming_an_unknown_user_or_package_is_stored_without_them(client, owner, make_user):
    """Forged or stale metadata must neither break the webhook (5xx forever) nor attach a row."""
    evt = ev.payment_intent_payment_failed(
        "00000000-0000-4000-8000-000000000000", "tokens_999", 500
    )
    assert deliver(client, evt).status_code == 200
    row = purchase(owner, evt["data"]["object"]["id"])
    assert (row["status"], row["user_id"], row["package_code"]) == ("failed", None, None)


def test_a_declined_then_paid_intent_grants_once(client, owner, make_user):
    user = make_user()
    pi = ev.new_id("pi")
    deliver(client, ev.payment_intent_payment_failed(user, "tokens_100", 500, pi=pi))
    assert (
        deliver(client, ev.payment_intent_succeeded(user, "tokens_100", 500, pi=pi)).get_json()[
            "outcome"
        ]
        == "processed"
    )
    row = purchase(owner, pi)
    assert (row["display_status"], row["reason"], row["tokens_granted"]) == ("paid", None, 100)
    assert balance_of(owner, user) == 100
    # a late duplicate failure (another event id) cannot undo the grant
    deliver(client, ev.payment_intent_payment_failed(user, "tokens_100", 500, pi=pi))
    assert purchase(owner, pi)["status"] == "granted" and grants_for(owner, pi) == 1


# --------------------------------------------------------------------------------------------
# Rejections and events we do not act on
# --------------------------------------------------------------------------------------------
def test_amount_mismatch_is_rejected_and_visible(client, owner, make_user):
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_600", 500)

    reply = deliver(client, evt).get_json()

    assert reply["outcome"] == "rejected"
    assert "amount mismatch" in reply["detail"]
    stored = event_row(owner, evt["id"])
    assert stored["outcome"] == "rejected" and "amount mismatch" in stored["detail"]
    row = purchase(owner, evt["data"]["object"]["payment_intent"])
    assert row["status"] == "rejected" and "amount mismatch" in row["reason"]
    assert balance_of(owner, user) == 0


def test_unknown_user_is_rejected(client, owner):
    ghost = "00000000-0000-4000-8000-000000000000"
    evt = ev.payment_intent_succeeded(ghost, "tokens_100", 500)
    reply = deliver(client, evt).get_json()
    assert reply["outcome"] == "rejected" and "unknown user" in reply["detail"]
    assert purchase(owner, evt["data"]["object"]["id"])["status"] == "rejected"


def test_payment_intent_without_our_metadata_is_ignored(client, owner):
    evt = ev.payment_intent_succeeded(None, None, 500, with_metadata=False)
    reply = deliver(client, evt).get_json()
    assert reply["outcome"] == "ignored"
    assert purchase(owner, evt["data"]["object"]["id"]) is None


def test_unknown_event_type_is_acknowledged_and_ignored(client, owner):
    evt = ev.event("customer.created", {"id": "cus_123", "object": "customer"})
    response = deliver(client, evt)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "ignored"
    assert event_row(owner, evt["id"])["outcome"] == "ignored"


# --------------------------------------------------------------------------------------------
# Database trouble: answer 5xx so Stripe retries, never 200 with a lost grant
# --------------------------------------------------------------------------------------------
def test_database_down_answers_500_then_the_retry_grants(make_app, database_url, owner, make_user):
    dead = make_conninfo(database_url, host="127.0.0.1", port=1, connect_timeout=1)
    down = make_app(DATABASE_URL=dead, WEBHOOK_DB_TIMEOUT_SECONDS=1).test_client()
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)

    refused = deliver(down, evt)

    assert refused.status_code == 500
    assert event_row(owner, evt["id"]) is None
    assert balance_of(owner, user) == 0

    retried = deliver(make_app().test_client(), evt)
    assert retried.status_code == 200
    assert retried.get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100


def test_lock_timeout_answers_500_records_the_failure_then_the_retry_grants(
    make_app, database_url, owner, make_user
):
    """A real error mid-handling: the user's row is locked by another transaction."""
    impatient = make_conninfo(database_url, options="-c lock_timeout=200")
    client = make_app(DATABASE_URL=impatient).test_client()
    user = make_user()
    evt = ev.checkout_session_completed(user, "tokens_100", 500)

    with psycopg.connect(database_url) as blocker:
        blocker.execute("select 1 from tokenbill.users where id = %s for update", [user])
        refused = deliver(client, evt)
        blocker.rollback()

    assert refused.status_code == 500
    failed = event_row(owner, evt["id"])
    assert failed["outcome"] == "failed" and "lock" in failed["detail"]
    assert balance_of(owner, user) == 0

    retried = deliver(client, evt)
    assert retried.get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100
    assert event_row(owner, evt["id"])["attempts"] == 2


# --------------------------------------------------------------------------------------------
# Rate limiting never applies to Stripe
# --------------------------------------------------------------------------------------------
RATE_LIMIT_SCRIPT = """
import json, sys
from webapp import create_app
from tests.support import stripe_events as ev
from tests.support.servers import serve
from tests.support.webhooks import WEBHOOK, deliver, event_row, grants_for, purchase
cfg = json.loads(sys.argv[1])
app = create_app(cfg)
client = app.test_client()
codes = []
for _ in range(4):
    evt = ev.event("customer.created", {"id": "cus_rl", "object": "customer"})
    body, header = ev.signed(evt, cfg["STRIPE_WEBHOOK_SECRET"])
    codes.append(client.post("/api/webhook/stripe", data=body,
                             headers={"Stripe-Signature": header}).status_code)
codes.append(client.get("/auth/login").status_code)
codes.append(client.get("/auth/login").status_code)
codes.append(client.get("/auth/login").status_code)
print(json.dumps(codes))
"""


def test_rate_limits_do_not_apply_to_the_webhook(app_config: dict[str, Any]):
    """In a subprocess: flask-limiter's app-wide limits live on a process-global limiter."""
    cfg = {**app_config, "RATELIMIT_ENABLED": True, "RATELIMIT_APPLICATION": "2 per minute"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, "-c", RATE_LIMIT_SCRIPT, json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        check=True,
    )
    codes = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes[:4] == [200, 200, 200, 200]
    assert codes[4:] == [200, 200, 429]  # the limit is real for everything else

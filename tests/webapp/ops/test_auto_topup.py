"""The auto top-up worker (webapp/ops/auto_topup.py): the off-session PaymentIntent it creates,
checked by the real stripe-mock through the recording proxy, and the outcomes it records.

What PostgreSQL decides (crossings, the cap, failures, grants) is in tests/db/test_auto_topup.py.
"""

from __future__ import annotations

import pytest
import stripe

from tests.support.auto_topup import only_our_topups, queued  # noqa: F401 (a fixture)
from webapp.ops.auto_topup import Outcome, charge, from_card_error, run_once
from webapp.stripe_gateway import client_from_config

pytestmark = pytest.mark.usefixtures("only_our_topups")


INTENTS = "/v1/payment_intents"


def stripe_client(base: str) -> stripe.StripeClient:
    return client_from_config({"STRIPE_SECRET_KEY": "sk_test_tokenbill", "STRIPE_API_BASE": base})


def test_worker_creates_the_off_session_intent_with_the_crossings_key(
    database_url, owner, app_conn, make_user, proxy
):
    user, customer, row = queued(owner, app_conn, make_user)

    counts = run_once(database_url, stripe_client(proxy.url))

    [listed] = proxy.requests_to("GET", "/v1/payment_methods")
    assert (listed.form["customer"], listed.form["type"]) == (customer, "card")
    [sent] = proxy.requests_to("POST", INTENTS)
    form = sent.form
    assert sent.header("Idempotency-Key") == row["idempotency_key"]
    assert (form["amount"], form["currency"], form["customer"]) == ("500", "usd", customer)
    assert form["payment_method"].startswith("pm_")
    assert (form["confirm"], form["off_session"]) == ("true", "true")
    assert form["metadata[user_id]"] == str(user)
    assert form["metadata[package]"] == "tokens_100"
    assert form["metadata[topup_id]"] == str(row["id"])
    # stripe-mock's fixture intent is requires_payment_method: recorded as a decline
    after = owner.execute("select * from api.auto_topups where id = %s", [row["id"]]).fetchone()
    assert counts == {"failed": 1}
    assert after["status"] == "failed" and after["payment_intent_id"].startswith("pi_test_")
    assert run_once(database_url, stripe_client(proxy.url)) == {}  # nothing sent twice


def test_a_retried_charge_sends_the_same_key_and_gets_the_same_intent(
    owner, app_conn, make_user, proxy
):
    """A worker that died after Stripe answered retries with the crossing's key."""
    _, customer, row = queued(owner, app_conn, make_user)
    claim = {**row, "customer_id": customer, "tokens": 100}
    first = charge(stripe_client(proxy.url), claim)
    again = charge(stripe_client(proxy.url), claim)
    assert first.payment_intent_id == again.payment_intent_id
    keys = {r.header("Idempotency-Key") for r in proxy.requests_to("POST", INTENTS)}
    assert keys == {row["idempotency_key"]}


def test_no_customer_fails_without_calling_stripe(database_url, owner, app_conn, make_user, proxy):
    _, _, row = queued(owner, app_conn, make_user, customer=None)
    assert run_once(database_url, stripe_client(proxy.url)) == {"failed": 1}
    assert proxy.requests == []
    error = owner.execute("select error from api.auto_topups where id = %s", [row["id"]]).fetchone()
    assert "no saved card" in error["error"]


def test_stripe_unreachable_keeps_the_topup_queued(database_url, owner, app_conn, make_user):
    _, _, row = queued(owner, app_conn, make_user)
    unreachable = stripe.StripeClient(
        "sk_test_tokenbill", base_addresses={"api": "http://127.0.0.1:9"}, max_network_retries=0
    )
    assert run_once(database_url, unreachable) == {"pending": 1}
    after = owner.execute("select * from api.auto_topups where id = %s", [row["id"]]).fetchone()
    assert (after["status"], after["attempts"]) == ("pending", 1)


def test_card_errors_map_to_decline_or_authentication():
    def card_error(code: str) -> stripe.CardError:
        body = {"error": {"code": code, "message": "m", "payment_intent": {"id": "pi_3ds"}}}
        return stripe.CardError("m", None, code, json_body=body)

    assert from_card_error(card_error("authentication_required")).status == "requires_action"
    assert from_card_error(card_error("authentication_required")).payment_intent_id == "pi_3ds"
    assert from_card_error(card_error("card_declined")) == Outcome("failed", "pi_3ds", error="m")


def test_the_cli_command_runs_one_pass(make_app, owner, app_conn, make_user, proxy):
    queued(owner, app_conn, make_user)
    app = make_app(STRIPE_API_BASE=proxy.url)
    result = app.test_cli_runner().invoke(args=["auto-topup", "--once"])
    assert result.exit_code == 0, result.output
    assert "failed 1" in result.output


def test_intent_statuses_map_to_topup_outcomes():
    from webapp.ops.auto_topup import from_intent

    def intent(status: str, **fields: object) -> stripe.PaymentIntent:
        return stripe.PaymentIntent.construct_from({"id": "pi_1", "status": status, **fields}, "k")

    bank = {"type": "redirect_to_url", "redirect_to_url": {"url": "https://bank.example/3ds"}}
    assert from_intent(intent("succeeded")) == Outcome("processing", "pi_1")
    assert from_intent(intent("requires_action", next_action=bank)) == Outcome(
        "requires_action", "pi_1", "https://bank.example/3ds"
    )
    declined = intent("requires_payment_method", last_payment_error={"message": "Declined."})
    assert from_intent(declined) == Outcome("failed", "pi_1", error="Declined.")

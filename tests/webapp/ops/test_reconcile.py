"""webapp.ops.reconcile: against stripe-mock (through the recording proxy) and at the DB level."""

from __future__ import annotations

import io
import json

import stripe

from tests.conftest import audit, balance_of
from tests.support.stripe_events import checkout_session_object, new_id
from webapp.ops import reconcile


def test_sessions_we_never_created_are_reported_not_granted(proxy, webhook_conn, owner):
    client = stripe.StripeClient("sk_test_tokenbill", base_addresses={"api": proxy.url})
    out = io.StringIO()
    before = owner.execute("select count(*) as n from api.ledger_entries").fetchone()["n"]

    results = reconcile.reconcile(webhook_conn, client, since_hours=72, out=out)

    # stripe-mock lists one fixture session, which tokenbill never recorded.
    assert len(results) == 1
    assert (results[0].verdict, results[0].detail) == ("skipped", "not created by tokenbill")
    assert f"{results[0].session_id}: skipped: not created by tokenbill" in out.getvalue()
    assert "1 sessions since 72 h: 1 skipped" in out.getvalue()
    [listed] = proxy.requests_to("GET", "/v1/checkout/sessions")
    assert listed.form["status"] == "complete"
    assert listed.form["limit"] == "100"
    assert int(listed.form["created[gte]"]) > 0
    after = owner.execute("select count(*) as n from api.ledger_entries").fetchone()["n"]
    assert after == before


def test_the_flask_command_reads_the_app_configuration(proxy, make_app):
    app = make_app(STRIPE_API_BASE=proxy.url)
    result = app.test_cli_runner().invoke(args=["reconcile", "--since-hours", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped: not created by tokenbill" in result.output


def test_the_flask_command_without_a_stripe_key_is_a_usage_error(make_app):
    app = make_app(STRIPE_SECRET_KEY="")
    result = app.test_cli_runner().invoke(args=["reconcile"])
    assert result.exit_code == 2
    assert "STRIPE_SECRET_KEY" in result.output


def recorded_session(owner, user, package="tokens_100", amount=500, **kw) -> dict:
    session = checkout_session_object(user, package, amount, **kw)
    owner.execute(
        "select api.record_checkout_session(%s, %s, %s, null)", [session["id"], user, package]
    )
    return session


def test_paid_session_is_granted_once(webhook_conn, owner, make_user):
    user = make_user()
    session = recorded_session(owner, user)
    fetched: list[str] = []

    def fetch(session_id: str) -> str:
        fetched.append(session_id)
        return json.dumps(session)

    first = reconcile.reconcile_session(webhook_conn, session["id"], "paid", fetch)
    second = reconcile.reconcile_session(webhook_conn, session["id"], "paid", fetch)

    assert (first.verdict, first.detail) == ("granted", "granted 100 tokens")
    assert second.verdict == "already granted"
    assert fetched == [session["id"], session["id"]]
    assert balance_of(owner, user) == 100
    assert audit(owner) == []


def test_session_already_granted_by_the_webhook(webhook_conn, owner, make_user):
    user = make_user()
    session = recorded_session(owner, user)
    event = {
        "id": new_id("evt"),
        "type": "checkout.session.completed",
        "data": {"object": session},
    }
    webhook_conn.execute("select * from api.handle_stripe_event(%s::jsonb)", [json.dumps(event)])

    result = reconcile.reconcile_session(
        webhook_conn, session["id"], "paid", lambda _: json.dumps(session)
    )

    assert result.verdict == "already granted"
    assert balance_of(owner, user) == 100


def test_amount_mismatch_is_rejected(webhook_conn, owner, make_user):
    user = make_user()
    session = recorded_session(owner, user, "tokens_600", 20)

    result = reconcile.reconcile_session(
        webhook_conn, session["id"], "paid", lambda _: json.dumps(session)
    )

    assert result.verdict == "rejected"
    assert "amount mismatch" in result.detail
    assert balance_of(owner, user) == 0
    assert audit(owner) == []


def test_unpaid_session_is_skipped_without_fetching(webhook_conn, owner, make_user):
    user = make_user()
    session = recorded_session(owner, user, payment_status="unpaid")

    def fetch(_: str) -> str:
        raise AssertionError("an unpaid session must not be fetched")

    result = reconcile.reconcile_session(webhook_conn, session["id"], "unpaid", fetch)
    assert (result.verdict, result.detail) == ("skipped", "payment_status is unpaid")

"""scripts.reconcile: against stripe-mock (through the recording proxy) and at the DB level."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import stripe

from scripts import reconcile
from tests.conftest import audit, balance_of
from tests.support.recording_proxy import RecordingProxy
from tests.support.stripe_events import checkout_session_object, new_id


@pytest.fixture
def proxy(stripe_mock_url: str) -> Iterator[RecordingProxy]:
    with RecordingProxy(stripe_mock_url) as running:
        yield running


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


def test_main_reads_the_environment(proxy, database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_tokenbill")
    monkeypatch.setenv("STRIPE_API_BASE", proxy.url)
    assert reconcile.main(["--since-hours", "1"]) == 0
    assert "skipped: not created by tokenbill" in capsys.readouterr().out


def test_main_without_a_stripe_key_is_a_usage_error(database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "")
    assert reconcile.main([]) == 2
    assert "STRIPE_SECRET_KEY" in capsys.readouterr().err


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

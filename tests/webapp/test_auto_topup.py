"""Auto top-up from the app's side: the worker's off-session PaymentIntent (checked by the real
stripe-mock through the recording proxy), the saved card on the settings page, the notices.

What PostgreSQL decides (crossings, the cap, failures, grants) is in tests/db/test_auto_topup.py.
"""

from __future__ import annotations

import pytest
import stripe

from tests.conftest import WEBHOOK_SECRET, AuthActions, balance_of, connect_as_role
from tests.support import stripe_events as ev
from tests.support.recording_proxy import RecordingProxy
from webapp.stripe_gateway import client_from_config
from webapp.topup_worker import Outcome, charge, from_card_error, run_once

INTENTS = "/v1/payment_intents"


@pytest.fixture
def proxy(stripe_mock_url):
    with RecordingProxy(stripe_mock_url) as running:
        yield running


@pytest.fixture(autouse=True)
def only_our_topups(owner):
    """The outbox is shared by the test database: earlier tests' rows are not ours."""
    owner.execute("update tokenbill.auto_topups set status = 'canceled' where status = 'pending'")


def stripe_client(base: str) -> stripe.StripeClient:
    return client_from_config({"STRIPE_SECRET_KEY": "sk_test_tokenbill", "STRIPE_API_BASE": base})


def queued(owner, app_conn, make_user, *, customer: str | None = "cus_worker_1") -> tuple:
    """A user with a Customer and auto top-up on, whose last consumption crossed 50."""
    user = make_user(balance=60)
    if customer:
        customer = f"{customer}_{str(user)[:8]}"
        app_conn.execute("select api.record_stripe_customer(%s, %s)", [user, customer])
    app_conn.execute("select api.set_auto_topup(%s, true, 50, 'tokens_100', 2000)", [user])
    owner.execute("select api.consume(%s, 'cross', 20)", [user])
    row = owner.execute("select * from tokenbill.auto_topups where user_id = %s", [user]).fetchone()
    return user, customer, row


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


# --------------------------------------------------------------------------------------------
# Settings page: the saved card and the auto top-up form
# --------------------------------------------------------------------------------------------
@pytest.fixture
def account(make_app, proxy, owner):
    app = make_app(STRIPE_API_BASE=proxy.url)
    client = app.test_client()
    actions = AuthActions(client)
    actions.register()
    return client, actions.user_id(owner)


def with_customer(app_conn, user) -> str:
    customer = f"cus_settings_{str(user)[:8]}"
    app_conn.execute("select api.record_stripe_customer(%s, %s)", [user, customer])
    return customer


def test_settings_show_the_saved_card_from_stripe_and_remove_it(account, app_conn, proxy):
    client, user = account
    assert b'id="no-saved-card"' in client.get("/account/settings").data
    with_customer(app_conn, user)
    page = client.get("/account/settings").data.decode()
    assert "Visa ending in <strong>4242</strong>" in page  # stripe-mock's fixture card
    pm = page.split('name="payment_method" value="')[1].split('"')[0]

    # someone else's card id is not ours to remove
    assert (
        client.post("/account/card/remove", data={"payment_method": "pm_other"}).status_code == 404
    )
    assert proxy.requests_to("POST", "/v1/payment_methods/pm_other/detach") == []

    removed = client.post("/account/card/remove", data={"payment_method": pm})
    assert removed.status_code == 303
    assert len(proxy.requests_to("POST", f"/v1/payment_methods/{pm}/detach")) == 1


def test_auto_topup_needs_a_saved_card_and_a_cap_covering_the_package(account, app_conn, owner):
    client, user = account
    form = {"enabled": "on", "threshold": "50", "package": "tokens_100", "monthly_cap": "20"}
    refused = client.post("/account/auto-topup", data=form)
    assert refused.status_code == 400 and "Save a card first" in refused.data.decode()
    with_customer(app_conn, user)
    too_small = client.post("/account/auto-topup", data={**form, "monthly_cap": "4"})
    assert too_small.status_code == 400 and "at least one package" in too_small.data.decode()
    assert client.post("/account/auto-topup", data={**form, "threshold": "x"}).status_code == 400

    assert client.post("/account/auto-topup", data=form).status_code == 303
    saved = owner.execute(
        "select * from api.auto_topup_settings where user_id = %s", [user]
    ).fetchone()
    assert (saved["enabled"], saved["threshold"], saved["monthly_cap_cents"]) == (True, 50, 2000)
    assert client.post("/account/auto-topup", data={**form, "enabled": ""}).status_code == 303
    assert (
        owner.execute(
            "select enabled from api.auto_topup_settings where user_id = %s", [user]
        ).fetchone()["enabled"]
        is False
    )


def test_requires_action_shows_a_notice_and_completion_grants_once(
    account, app_conn, owner, database_url, admin_id
):
    client, user = account
    with_customer(app_conn, user)
    app_conn.execute("select api.set_auto_topup(%s, true, 50, 'tokens_100', 2000)", [user])
    owner.execute("select api.admin_adjust(%s, %s, 60, 'funds')", [admin_id, user])
    owner.execute("select api.consume(%s, 'cross', 20)", [user])
    topup = owner.execute("select id from api.auto_topups where user_id = %s", [user]).fetchone()
    pi = ev.new_id("pi")
    with_notifier(database_url, topup["id"], pi)

    page = client.get("/account/settings").data.decode()
    link = f"/account/topups/{topup['id']}/authenticate"
    assert "needs your confirmation (3-D Secure)" in page and link in page
    assert "Confirm with my bank" in client.get(link).data.decode()

    succeeded = ev.payment_intent_succeeded(user, "tokens_100", 500, pi=pi)
    for _ in range(2):  # a redelivery changes nothing
        body, header = ev.signed(succeeded, WEBHOOK_SECRET)
        client.post("/api/webhook/stripe", data=body, headers={"Stripe-Signature": header})
    assert balance_of(owner, user) == 40 + 100
    assert "3-D Secure" not in client.get("/account/settings").data.decode()
    assert "succeeded" in client.get("/account/settings").data.decode()


def with_notifier(database_url, topup_id, pi) -> None:
    """The worker's record of an intent that needs 3-D Secure."""
    with connect_as_role(database_url, "tokenbill_notifier") as conn:
        conn.execute("select api.finish_auto_topup(%s, 'requires_action', %s)", [topup_id, pi])


def test_someone_elses_topup_page_is_404(account, owner, make_user, app_conn):
    client, _ = account
    _, _, row = queued(owner, app_conn, make_user)
    assert client.get(f"/account/topups/{row['id']}/authenticate").status_code == 404
    assert client.post(f"/account/topups/{row['id']}/authenticate").status_code == 404


def test_turned_off_after_failures_the_user_is_told(account, app_conn, owner):
    client, user = account
    with_customer(app_conn, user)
    app_conn.execute("select api.set_auto_topup(%s, true, 50, 'tokens_100', 2000)", [user])
    owner.execute(
        "update tokenbill.auto_topup_settings set enabled = false, disabled_reason = %s"
        " where user_id = %s",
        ["Auto top-up was turned off after 3 failed payments in a row (last: declined).", user],
    )
    page = client.get("/billing/buy").data.decode()
    assert "turned off after 3 failed payments" in page


def test_completing_3d_secure_confirms_on_session_with_a_return_url(
    account, app_conn, owner, database_url, admin_id, proxy
):
    client, user = account
    with_customer(app_conn, user)
    app_conn.execute("select api.set_auto_topup(%s, true, 50, 'tokens_100', 2000)", [user])
    owner.execute("select api.admin_adjust(%s, %s, 60, 'funds')", [admin_id, user])
    owner.execute("select api.consume(%s, 'cross', 20)", [user])
    topup = owner.execute("select id from api.auto_topups where user_id = %s", [user]).fetchone()
    with_notifier(database_url, topup["id"], "pi_needs3ds")

    answer = client.post(f"/account/topups/{topup['id']}/authenticate")

    assert answer.status_code == 303
    [confirm] = proxy.requests_to("POST", "/v1/payment_intents/pi_needs3ds/confirm")
    assert confirm.form["return_url"] == "http://localhost/account/settings"
    assert balance_of(owner, user) == 40  # nothing granted until the webhook says succeeded


def test_intent_statuses_map_to_topup_outcomes():
    from webapp.topup_worker import from_intent

    def intent(status: str, **fields: object) -> stripe.PaymentIntent:
        return stripe.PaymentIntent.construct_from({"id": "pi_1", "status": status, **fields}, "k")

    bank = {"type": "redirect_to_url", "redirect_to_url": {"url": "https://bank.example/3ds"}}
    assert from_intent(intent("succeeded")) == Outcome("processing", "pi_1")
    assert from_intent(intent("requires_action", next_action=bank)) == Outcome(
        "requires_action", "pi_1", "https://bank.example/3ds"
    )
    declined = intent("requires_payment_method", last_payment_error={"message": "Declined."})
    assert from_intent(declined) == Outcome("failed", "pi_1", error="Declined.")

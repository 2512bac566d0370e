"""Auto top-up on the settings page: the saved card (from Stripe, via stripe-mock and the
recording proxy), the settings form, the 3-D Secure and turned-off notices.

The worker is tested in tests/webapp/ops/test_auto_topup.py, PostgreSQL's part in
tests/db/test_auto_topup.py.
"""

from __future__ import annotations

import pytest

from tests.conftest import WEBHOOK_SECRET, AuthActions, balance_of, connect_as_role
from tests.support import stripe_events as ev
from tests.support.auto_topup import only_our_topups, queued  # noqa: F401 (a fixture)


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


pytestmark = pytest.mark.usefixtures("only_our_topups")


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

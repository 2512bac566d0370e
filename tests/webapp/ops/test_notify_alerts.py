"""webapp/ops/notify_alerts.py posts signed alerts to a real local HTTP server, once each."""

from __future__ import annotations

import json

import stripe

from webapp.ops import notify_alerts as alert_notifier

SECRET = "alert-secret"


def verify(header: str, body: bytes) -> bool:
    """Checked by the Stripe SDK's own verifier: the alerts use Stripe's scheme."""
    try:
        return stripe.WebhookSignature.verify_header(body.decode(), header, SECRET, tolerance=300)
    except stripe.SignatureVerificationError:
        return False


def pending(conn, user):
    return conn.execute(
        "select count(*) as n from api.low_balance_alerts"
        " where user_id = %s and notified_at is null",
        [user],
    ).fetchone()["n"]


def test_alerts_are_posted_signed_and_once(database_url, owner, app_conn, make_user, receiver):
    user = make_user(balance=10)
    owner.execute("select * from api.consume(%s, 'n1')", [user])
    url = f"http://127.0.0.1:{receiver.server_port}/hook"

    alert_notifier.run_once(database_url, url, SECRET)
    alert_notifier.run_once(database_url, url, SECRET)

    mine = [(h, b) for h, b in receiver.received if json.loads(b)["user_id"] == str(user)]
    assert len(mine) == 1
    header, body = mine[0]
    assert verify(header, body)
    assert json.loads(body)["balance"] == 9 and json.loads(body)["threshold"] == 10
    assert pending(app_conn, user) == 0


def test_failed_delivery_stays_in_the_outbox_and_is_retried(
    database_url, owner, app_conn, make_user, receiver
):
    # deliver anything left by other tests first, so the failure hits our alert
    url = f"http://127.0.0.1:{receiver.server_port}/hook"
    alert_notifier.run_once(database_url, url, SECRET)
    user = make_user(balance=10)
    owner.execute("select * from api.consume(%s, 'n1')", [user])
    receiver.fail_next = 1

    sent, failed = alert_notifier.run_once(database_url, url, SECRET)
    assert (sent, failed) == (0, 1)
    row = app_conn.execute(
        "select notify_attempts, last_error from api.low_balance_alerts where user_id = %s", [user]
    ).fetchone()
    assert row["notify_attempts"] == 1 and "503" in row["last_error"]

    assert alert_notifier.run_once(database_url, url, SECRET) == (1, 0)
    assert pending(app_conn, user) == 0


def test_each_batch_is_committed_before_the_next_is_sent(
    database_url, owner, app_conn, make_user, receiver
):
    """A crash mid-run must not roll back alerts already delivered (they would be sent again)."""
    url = f"http://127.0.0.1:{receiver.server_port}/hook"
    alert_notifier.run_once(database_url, url, SECRET)  # drain what other tests left
    users = [make_user(balance=10) for _ in range(21)]  # one more than a batch of 20
    for user in users:
        owner.execute("select * from api.consume(%s, 'b1')", [user])
    seen_committed: list[int] = []

    def count_committed() -> None:
        row = owner.execute(
            "select count(*) as n from api.low_balance_alerts"
            " where user_id = any(%s) and notified_at is not null",
            [users],
        ).fetchone()
        seen_committed.append(row["n"])

    receiver.on_delivery = count_committed
    assert alert_notifier.run_once(database_url, url, SECRET) == (21, 0)
    assert seen_committed[:20] == [0] * 20
    assert seen_committed[20] == 20  # the first batch was durable before the 21st was posted

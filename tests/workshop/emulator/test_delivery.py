"""Refunds, event delivery and retries, the CLI scripts/run starts, and the real app end to end."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from tests.support.emulator import (
    CARD,
    SECRET,
    SUCCESS_EVENTS,
    USER_ID,
    Receiver,
    create,
    pay,
)
from workshop.emulator import EmulatorServer
from workshop.net import free_port

REPO = Path(__file__).resolve().parents[3]
DECLINED = {**CARD, "card_number": "4000 0000 0000 0002"}


def test_refunds_emit_charge_refunded_with_cumulative_amounts(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    session = create(client)
    pay(session)
    charge_id = receiver.of_type("charge.succeeded")[0].data.object.id
    receiver.clear()

    partial = client.v1.refunds.create(params={"charge": charge_id, "amount": 200})
    assert (partial.object, partial.amount, partial.status) == ("refund", 200, "succeeded")
    refunded = receiver.of_type("charge.refunded")
    assert len(refunded) == 1
    assert refunded[0].data.object.amount_refunded == 200
    assert refunded[0].data.object.refunded is False
    assert refunded[0].data.object.metadata["user_id"] == USER_ID

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge_id, "amount": 301})
    assert too_much.value.code == "amount_too_large"

    receiver.clear()
    pi_id = client.v1.charges.retrieve(charge_id).payment_intent
    rest = client.v1.refunds.create(params={"payment_intent": pi_id})
    assert rest.amount == 300
    final = receiver.of_type("charge.refunded")[0].data.object
    assert (final.amount_refunded, final.refunded) == (500, True)
    assert client.v1.charges.retrieve(charge_id).amount_refunded == 500

    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"charge": charge_id})
    assert again.value.code == "charge_already_refunded"


def test_refund_needs_a_succeeded_charge(client: stripe.StripeClient, receiver: Receiver) -> None:
    session = create(client)
    pay(session, **DECLINED)
    failed_pi = receiver.of_type("payment_intent.payment_failed")[0].data.object
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"payment_intent": failed_pi.id})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"charge": failed_pi.latest_charge})
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.refunds.create(params={"charge": "ch_missing"})
    assert missing.value.http_status == 404


def test_refund_by_curl_style_basic_auth(
    client: stripe.StripeClient, emulator: EmulatorServer, receiver: Receiver
) -> None:
    session = create(client)
    pay(session)
    charge_id = receiver.of_type("charge.succeeded")[0].data.object.id
    resp = requests.post(
        f"{emulator.url}/v1/refunds",
        auth=("sk_test_emulator", ""),
        data={"charge": charge_id},
        timeout=30,
    )
    assert resp.status_code == 200
    assert resp.json()["amount"] == 500


def test_failed_deliveries_are_retried(client: stripe.StripeClient, receiver: Receiver) -> None:
    receiver.fail_first = 1
    session = create(client)
    assert pay(session).status_code == 303
    assert set(receiver.types()) == SUCCESS_EVENTS
    # Every event was refused once, then accepted (the duplicate is accepted straight away).
    assert sorted(receiver.attempts.values()) == [2, 2, 3]


def test_events_are_listed_and_retrievable(client: stripe.StripeClient) -> None:
    session = create(client)
    pay(session)
    events = client.v1.events.list(params={"type": "checkout.session.completed"})
    assert [e.data.object["id"] for e in events.data] == [session.id]
    again = client.v1.events.retrieve(events.data[0].id)
    assert again.type == "checkout.session.completed"


def test_cli_serves_with_the_flags_scripts_run_uses(receiver: Receiver) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workshop.emulator",
            "--port",
            str(port),
            "--webhook-url",
            receiver.url,
        ],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "STRIPE_WEBHOOK_SECRET": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": url})
        session = create(client)
        assert session.url == f"{url}/pay/{session.id}"
        assert pay(session).status_code == 303
        assert set(receiver.types()) == SUCCESS_EVENTS
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"whsec_" not in err  # the secret is never logged


# --------------------------------------------------------------------------- with the real app


def test_a_purchase_and_refund_through_the_real_app(
    make_app: Any, owner: Any, emulator: EmulatorServer
) -> None:
    """The app's own Checkout, success page and webhook code accept what the emulator sends."""
    from tests.conftest import PASSWORD, audit, balance_of
    from tests.support.servers import serve

    app = make_app(
        STRIPE_API_BASE=emulator.url,
        STRIPE_SECRET_KEY="sk_test_emulator",
        STRIPE_WEBHOOK_SECRET=SECRET,
        PUBLIC_BASE_URL="",
        PAYMENTS_SIMULATED=True,
    )
    with serve(app) as app_url:
        emulator.emulator.config.webhook_url = f"{app_url}/api/webhook/stripe"
        browser = requests.Session()
        email = f"emulator-{time.time_ns()}@example.test"
        browser.post(f"{app_url}/auth/register", data={"email": email, "password": PASSWORD})
        buy = browser.get(f"{app_url}/billing/buy", timeout=10)
        nonce = re.search(r'name="nonce" value="([^"]+)"', buy.text)
        assert nonce, "not logged in, or the buy page changed"
        checkout = browser.post(
            f"{app_url}/billing/checkout",
            data={"package": "tokens_100", "nonce": nonce.group(1)},
            allow_redirects=False,
            timeout=30,
        )
        assert checkout.status_code == 303
        pay_url = checkout.headers["Location"]
        assert pay_url.startswith(f"{emulator.url}/pay/cs_test_")
        assert email in browser.get(pay_url, timeout=10).text

        paid = browser.post(pay_url, data=CARD, allow_redirects=False, timeout=30)
        assert paid.status_code == 303
        assert paid.headers["Location"].startswith(f"{app_url}/billing/success?session_id=")
        assert browser.get(paid.headers["Location"], timeout=30).status_code == 200

        user = owner.execute("select id from api.accounts where email = %s", [email]).fetchone()
        assert balance_of(owner, user["id"]) == 100
        sent = list(emulator.emulator.events)
        outcomes = owner.execute(
            "select type, outcome from api.stripe_events where id = any(%s)", [sent]
        ).fetchall()
        assert {row["type"] for row in outcomes} == SUCCESS_EVENTS  # the duplicate is one row
        assert len(outcomes) == 3
        assert {row["outcome"] for row in outcomes} <= {"processed", "ignored"}

        (charge,) = [c for c in emulator.emulator.charges.values() if c["receipt_email"] == email]
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": emulator.url})
        client.v1.refunds.create(params={"charge": charge["id"]})
        assert balance_of(owner, user["id"]) == 0
        assert audit(owner) == []

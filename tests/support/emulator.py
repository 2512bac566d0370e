"""A live Checkout emulator for tests: a webhook receiver that verifies signatures, and the
Checkout Session params and pay-page posts webapp/billing.py and a browser would make."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
import stripe

from workshop.net import ServerThread

SECRET = "whsec_emulator_test_secret"
USER_ID = "3f0b4a0e-8c1e-4d55-9d7e-3a8f2b0c1d2e"
SUCCESS_EVENTS = {"checkout.session.completed", "payment_intent.succeeded", "charge.succeeded"}
CARD = {"card_number": "4242 4242 4242 4242", "expiry": "12 / 34", "cvc": "123"}


@dataclass
class Receiver:
    """A webhook endpoint that verifies signatures like the app and records what arrived."""

    url: str = ""
    events: list[stripe.Event] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    fail_first: int = 0  # answer 500 to the first N attempts of every event
    lock: threading.Lock = field(default_factory=threading.Lock)

    def types(self) -> list[str]:
        return sorted(e.type for e in self.events)

    def of_type(self, type_: str) -> list[stripe.Event]:
        return [e for e in self.events if e.type == type_]

    def clear(self) -> None:
        with self.lock:
            self.events.clear()
            self.attempts.clear()


@contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A Receiver listening on a free loopback port until the block ends."""
    rec = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                event = stripe.Webhook.construct_event(
                    body.decode("utf-8"), self.headers.get("Stripe-Signature"), SECRET
                )
            except (ValueError, stripe.SignatureVerificationError) as exc:
                with rec.lock:
                    rec.invalid.append(str(exc))
                self.send_response(400)
                self.end_headers()
                return
            with rec.lock:
                seen = rec.attempts.get(event.id, 0) + 1
                rec.attempts[event.id] = seen
                accept = seen > rec.fail_first
                if accept:
                    rec.events.append(event)
            self.send_response(200 if accept else 500)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with ServerThread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        rec.url = f"{server.url}/api/webhook/stripe"
        yield rec
    assert rec.invalid == []  # every delivery carried a valid signature


def session_params(**overrides: Any) -> dict[str, Any]:
    """The params webapp/billing.py sends for the tokens_100 package."""
    meta = {"user_id": USER_ID, "package": "tokens_100", "tokens": "100"}
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 500,
                    "product_data": {"name": "100 agent tokens"},
                },
                "quantity": 1,
            }
        ],
        "client_reference_id": USER_ID,
        "metadata": meta,
        "payment_intent_data": {"metadata": meta},
        "success_url": "http://shop.test/billing/success?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://shop.test/billing/buy?cancelled=1",
        "customer_email": "buyer@example.com",
    }
    params.update(overrides)
    return params


def create(client: stripe.StripeClient, **overrides: Any) -> stripe.checkout.Session:
    return client.v1.checkout.sessions.create(params=session_params(**overrides))


def pay(session: stripe.checkout.Session, **form: str) -> requests.Response:
    return requests.post(session.url, data=form or CARD, allow_redirects=False, timeout=30)


def pay_declined(
    session: stripe.checkout.Session, receiver: Receiver, card: dict[str, str], message: str
) -> requests.Response:
    """Pay ``session`` with ``card``; it must be declined (402, ``message``) with Stripe's two
    failure events."""
    resp = pay(session, **card)
    assert resp.status_code == 402
    assert message in resp.text
    assert receiver.types() == ["charge.failed", "payment_intent.payment_failed"]
    return resp

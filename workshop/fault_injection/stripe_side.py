"""Stripe's side: plan the payments, send each signed event until 2xx, from an outbox."""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import requests

from workshop import stripe_fixtures
from workshop.bench_common import (
    create_funded_users,
)
from workshop.fault_injection.config import (
    BACKOFF_START,
    CLIENT_TIMEOUT,
    MAX_ATTEMPTS,
    WEBHOOK_SECRET,
    Config,
    Stats,
    _backoff,
)


@dataclass
class Payment:
    user_id: uuid.UUID
    package: str
    tokens: int
    payment_intent: str


@dataclass(order=True)
class Delivery:
    due: float
    body: bytes = field(compare=False)
    event_id: str = field(compare=False)


def _plan_faults(cfg: Config, rng: random.Random) -> list[tuple[float, str]]:
    """When to restart PostgreSQL and kill a worker, in the run's first 85%.

    Kinds: "fast" and "immediate" (pg_ctl restart modes, alternating so that a run with two
    restarts has one of each) and "kill" (kill -9 of a random worker).
    """
    modes = ["fast", "immediate"]
    rng.shuffle(modes)
    restarts = [modes[i % 2] for i in range(cfg.pg_restarts)]
    kinds = restarts + ["kill"] * cfg.worker_kills
    return sorted((rng.uniform(0.05, 0.85) * cfg.duration, kind) for kind in kinds)


def _due(cfg: Config, rng: random.Random, fault_times: list[float]) -> float:
    """A delivery time: half at random, half just around a fault, so short runs still hit them."""
    if fault_times and rng.random() < 0.5:
        return max(0.0, rng.choice(fault_times) + rng.uniform(-0.2, 0.6))
    return rng.uniform(0, cfg.duration)


def _plan_payments(
    owner: psycopg.Connection[Any], cfg: Config, rng: random.Random, fault_times: list[float]
) -> tuple[list[Payment], list[Delivery]]:
    """Register buyers, record their Checkout Sessions, and schedule every delivery."""
    packages = owner.execute("select code, tokens, amount_cents from api.packages").fetchall()
    buyers = create_funded_users(owner, uuid.UUID(int=0), cfg.payments, 0, "fault-buyer")
    payments, deliveries = [], []
    for user_id in buyers:
        code, tokens, amount = rng.choice(packages)
        pi, cs = stripe_fixtures.new_id("pi"), stripe_fixtures.new_id("cs")
        # what the app records before redirecting the buyer to Stripe
        owner.execute(
            "select api.record_checkout_session(%s, %s, %s, %s)",
            [cs, user_id, code, f"https://checkout.stripe.test/{cs}"],
        )
        payments.append(Payment(user_id, code, tokens, pi))
        events = [
            stripe_fixtures.checkout_session_completed(user_id, code, amount, pi=pi, cs=cs),
            stripe_fixtures.payment_intent_succeeded(user_id, code, amount, pi=pi),
        ]
        for evt in events:
            body = stripe_fixtures.encode(evt)
            copies = 1 + (rng.random() < cfg.duplicate_rate)
            for _ in range(copies):
                deliveries.append(Delivery(_due(cfg, rng, fault_times), body, evt["id"]))
    deliveries.sort()
    return payments, deliveries


def _send_until_2xx(
    session: requests.Session, url: str, delivery: Delivery, stats: Stats, rng: random.Random
) -> None:
    """Deliver one event like Stripe: re-signed on every attempt, retried until 2xx."""
    delay = BACKOFF_START
    for attempt in range(1, MAX_ATTEMPTS + 1):
        stats.add("webhook attempts")
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": stripe_fixtures.sign(delivery.body, WEBHOOK_SECRET),
        }
        try:
            status = session.post(url, data=delivery.body, headers=headers, timeout=CLIENT_TIMEOUT)
            code = status.status_code
        except requests.RequestException:
            code = None
            stats.add("webhook connection errors")
        if code is not None and 200 <= code < 300:
            return
        if code is not None:
            stats.add("webhook 5xx" if code >= 500 else f"webhook {code}")
        if attempt < MAX_ATTEMPTS:
            stats.add("webhook retries")
            delay = _backoff(delay, rng)
    stats.violation(f"event {delivery.event_id} never got a 2xx in {MAX_ATTEMPTS} attempts")


@dataclass
class Outbox:
    """Deliveries still to make, in due order, and those already made (for redeliveries)."""

    due: list[Delivery]
    sent: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _sender(base_url: str, outbox: Outbox, started: float, stats: Stats, seed: int) -> None:
    """Take the next due delivery, wait for its time, deliver it; until none are left.

    While waiting, redeliver events already delivered (Stripe does when it missed our 2xx):
    the traffic stays dense, so faults hit webhooks in flight, and duplicates race the faults.
    """
    rng = random.Random(seed)
    url = f"{base_url}/api/webhook/stripe"
    with requests.Session() as session:
        while True:
            with outbox.lock:
                if not outbox.due:
                    return
                delivery = outbox.due.pop(0)
            while time.monotonic() < started + delivery.due:
                with outbox.lock:
                    again = rng.choice(outbox.sent) if outbox.sent else None
                if again is not None:
                    stats.add("webhook redeliveries")
                    _send_until_2xx(session, url, again, stats, rng)
                time.sleep(min(0.02, max(0.0, started + delivery.due - time.monotonic())))
            stats.add("webhook deliveries")
            _send_until_2xx(session, url, delivery, stats, rng)
            with outbox.lock:
                outbox.sent.append(delivery)

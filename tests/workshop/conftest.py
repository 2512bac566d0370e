"""Fixtures for the Checkout emulator's tests: a signature-checking receiver and a live emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from tests.support.emulator import SECRET, Receiver, serve_receiver
from workshop.emulator import EmulatorConfig, EmulatorServer


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as rec:
        yield rec


@pytest.fixture
def emulator(receiver: Receiver) -> Iterator[EmulatorServer]:
    config = EmulatorConfig(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_backoff=0.01,
        enabled_events=None,  # every type, so the tests see all the events Stripe creates
        prices={"price_tokens_250": {"unit_amount": 1000, "currency": "usd", "name": "250 t"}},
    )
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def client(emulator: EmulatorServer) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_x", base_addresses={"api": emulator.url}, max_network_retries=0
    )

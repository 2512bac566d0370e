"""The emulator's settings and the small records it passes around."""

from __future__ import annotations

from dataclasses import dataclass, field

from workshop.emulator.wire import (
    DEFAULT_ENABLED_EVENTS,
    DEFAULT_WEBHOOK_SECRET,
    DEFAULT_WEBHOOK_URL,
    Obj,
)

# --------------------------------------------------------------------------- the emulator


@dataclass
class EmulatorConfig:
    """Where pages and webhooks go, and how hard deliveries are retried."""

    public_url: str = ""  # empty: the server's own URL (set when it binds)
    webhook_url: str | None = DEFAULT_WEBHOOK_URL
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    webhook_attempts: int = 4
    # The endpoint's event types; None delivers every type (a Stripe endpoint set to "*").
    enabled_events: frozenset[str] | None = DEFAULT_ENABLED_EVENTS
    webhook_backoff: float = 0.25
    webhook_timeout: float = 10.0
    # Known price ids: id -> {"unit_amount": int, "currency": str, "name": str}.
    prices: dict[str, Obj] = field(default_factory=dict)
    seed: int | None = None


@dataclass(frozen=True)
class RequestInfo:
    """The API request that caused an event (Stripe puts it in ``event.request``)."""

    id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One webhook POST attempt, kept for debugging and tests."""

    event_id: str
    event_type: str
    attempt: int
    status: int | None
    error: str | None = None


@dataclass
class PayOutcome:
    """What the pay page should do after a card form submission."""

    kind: str  # "paid" | "declined" | "authenticate" | "invalid" | "closed"
    error: str | None = None
    redirect_url: str | None = None
    events: list[Obj] = field(default_factory=list)


_SESSION_PARAMS = frozenset(
    """after_expiration allow_promotion_codes automatic_tax billing_address_collection
    cancel_url client_reference_id consent_collection currency custom_fields custom_text
    customer customer_creation customer_email customer_update discounts expand expires_at
    invoice_creation line_items locale metadata mode payment_intent_data
    payment_method_collection payment_method_configuration payment_method_options
    payment_method_types phone_number_collection redirect_on_completion return_url
    saved_payment_method_options shipping_address_collection shipping_options submit_type
    success_url tax_id_collection ui_mode""".split()  # noqa: SIM905
)
_EXPANDABLE = {
    "checkout.session": frozenset({"payment_intent", "line_items"}),
    "payment_intent": frozenset({"latest_charge"}),
    "charge": frozenset({"payment_intent"}),
    "refund": frozenset({"charge", "payment_intent"}),
}

"""Customers, saved cards and off-session PaymentIntents (what auto top-up needs), as on Stripe.

A card paid with on a Checkout Session whose ``payment_intent_data[setup_future_usage]`` is
``off_session`` is saved to the session's Customer. ``POST /v1/payment_intents`` with
``confirm=true&off_session=true`` charges a saved card: 4242 succeeds, 0002 / 9995 are declined
(402 card_error, payment_intent.payment_failed), 3155 needs authentication (402
authentication_required), with the events Stripe sends.
"""

from __future__ import annotations

import re

from workshop.emulator.cards import AUTHENTICATE, DECLINED, Card
from workshop.emulator.config import RequestInfo
from workshop.emulator.payments import Payments
from workshop.emulator.wire import (
    ApiError,
    Obj,
    _as_int,
    _as_str,
    _invalid,
    _metadata,
    _missing,
    _not_found,
    new_id,
)

_CUSTOMER_PARAMS = frozenset({"email", "metadata", "name", "description", "expand"})
_INTENT_PARAMS = frozenset(
    {
        "amount",
        "currency",
        "customer",
        "payment_method",
        "confirm",
        "off_session",
        "metadata",
        "description",
        "expand",
        "return_url",
        "receipt_email",
    }
)


class CardFailure(ApiError):
    """A 402 whose error names the PaymentIntent, with the events the failure sent."""

    def __init__(
        self,
        message: str,
        code: str,
        intent: Obj,
        events: list[Obj],
        decline_code: str | None = None,
    ) -> None:
        super().__init__(402, message, type_="card_error", code=code)
        self.intent = intent
        self.events = events
        self.decline_code = decline_code

    def body(self) -> Obj:
        body = super().body()
        body["error"]["payment_intent"] = self.intent
        if self.decline_code:
            body["error"]["decline_code"] = self.decline_code
        return body


def card_payment_method(
    pm_id: str, customer_id: str, card: Card, expiry: tuple[int, int], email: str, now: int
) -> Obj:
    """A saved card as GET /v1/payment_methods shows it."""
    return {
        "id": pm_id,
        "object": "payment_method",
        "billing_details": {"email": email},
        "card": card.details(expiry),
        "created": now,
        "customer": customer_id,
        "livemode": False,
        "metadata": {},
        "type": "card",
    }


class Customers(Payments):
    """Customers and their saved cards; off-session charges of those cards."""

    def create_customer(self, params: Obj) -> Obj:
        for name in params:
            if name not in _CUSTOMER_PARAMS:
                raise ApiError(400, f"Received unknown parameter: {name}", param=name)
        email = params.get("email")
        if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", _as_str(email, "email")):
            raise _invalid("email", f"Invalid email address: {email}")
        customer = {
            "id": new_id("cus"),
            "object": "customer",
            "created": self.now(),
            "email": email,
            "livemode": False,
            "metadata": _metadata(params.get("metadata", {}), "metadata"),
            "name": params.get("name"),
        }
        self.customers[customer["id"]] = customer
        return customer

    def save_card(
        self, customer_id: str, pm_id: str, card: Card, expiry: tuple[int, int], email: str
    ) -> None:
        """Attach the card just paid with to the customer (setup_future_usage=off_session)."""
        self.payment_methods[pm_id] = card_payment_method(
            pm_id, customer_id, card, expiry, email, self.now()
        )
        self.saved_cards[pm_id] = (email, card, expiry)

    def list_payment_methods(self, params: Obj) -> Obj:
        customer = params.get("customer")
        if not customer:
            raise _missing("customer")
        data = sorted(
            (pm for pm in self.payment_methods.values() if pm["customer"] == customer),
            key=lambda pm: pm["created"],
            reverse=True,
        )
        return {"object": "list", "data": data, "has_more": False, "url": "/v1/payment_methods"}

    def detach(self, pm_id: str) -> Obj:
        pm = self.payment_methods.get(pm_id)
        if pm is None:
            raise _not_found("payment_method", pm_id)
        pm["customer"] = None
        self.saved_cards.pop(pm_id, None)
        return pm

    def create_intent(self, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
        """An off-session charge of a saved card (confirm=true, off_session=true only)."""
        for name in params:
            if name not in _INTENT_PARAMS:
                raise ApiError(400, f"Received unknown parameter: {name}", param=name)
        for name in ("amount", "currency", "customer", "payment_method"):
            if name not in params:
                raise _missing(name)
        if params.get("confirm") != "true" or params.get("off_session") != "true":
            raise _invalid(
                "confirm",
                "The emulator only charges saved cards off-session "
                "(confirm=true, off_session=true).",
            )
        customer = _as_str(params["customer"], "customer")
        if customer not in self.customers:
            raise _not_found("customer", customer, "customer")
        pm_id = _as_str(params["payment_method"], "payment_method")
        pm = self.payment_methods.get(pm_id)
        if pm is None or pm["customer"] != customer or pm_id not in self.saved_cards:
            raise _invalid(
                "payment_method",
                f"The PaymentMethod {pm_id} does not belong to the Customer {customer}.",
            )
        email, card, expiry = self.saved_cards[pm_id]
        pi = {
            "id": new_id("pi"),
            "object": "payment_intent",
            "amount": _as_int(params["amount"], "amount", 50),
            "amount_capturable": 0,
            "amount_received": 0,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": self.now(),
            "currency": _as_str(params["currency"], "currency").lower(),
            "customer": customer,
            "description": params.get("description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": _metadata(params.get("metadata", {}), "metadata"),
            "next_action": None,
            "payment_method": pm_id,
            "payment_method_types": ["card"],
            "receipt_email": email,
            "status": "requires_payment_method",
        }
        self.payment_intents[pi["id"]] = pi
        if card.result == AUTHENTICATE:
            message = (
                "This payment required an authentication action to complete, "
                "but off_session was set to true."
            )
            pi["last_payment_error"] = {
                "type": "card_error",
                "code": "authentication_required",
                "message": message,
            }
            events = [self._event("payment_intent.payment_failed", pi, info)]
            raise CardFailure(message, "authentication_required", dict(pi), events)
        charge = self._charge(pi, email, expiry, card)
        if card.result == DECLINED:
            pi.update(
                latest_charge=charge["id"],
                last_payment_error=card.payment_error(charge["id"]),
            )
            events = [
                self._event("charge.failed", charge, info),
                self._event("payment_intent.payment_failed", pi, info),
            ]
            raise CardFailure(
                card.message or "Your card was declined.",
                "card_declined",
                dict(pi),
                events,
                card.decline_code,
            )
        pi.update(status="succeeded", amount_received=pi["amount"], latest_charge=charge["id"])
        events = [
            self._event("payment_intent.succeeded", pi, info),
            self._event("charge.succeeded", charge, info),
        ]
        return pi, events

"""The simulated pay page's logic: card outcomes, 3-D Secure, PaymentIntents and Charges."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

from workshop.emulator.cards import (
    AUTHENTICATE,
    AUTHENTICATION_FAILED,
    CARDS,
    DECLINED,
    Card,
    apply_promotion_code,
)
from workshop.emulator.config import (
    PayOutcome,
)
from workshop.emulator.sessions import Sessions
from workshop.emulator.wire import (
    Obj,
    _parse_expiry,
    new_id,
)


class Payments(Sessions):
    """Paying a session with a test card: declines, challenges, success."""

    def pay(self, session_id: str, form: Mapping[str, str]) -> PayOutcome:
        """Charge a test card against an open session (the hosted page's submit)."""
        session = self.get("checkout.session", session_id)
        if session["status"] != "open":
            return PayOutcome("closed")
        email = session["customer_email"] or form.get("email", "").strip()
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
            return PayOutcome("invalid", "Enter a valid email address.")
        number = re.sub(r"[\s-]", "", form.get("card_number", ""))
        card = CARDS.get(number)
        if card is None:
            return PayOutcome("invalid", "Use a test card: 4242 4242 4242 4242")
        expiry = _parse_expiry(form.get("expiry", ""))
        if expiry is None:
            return PayOutcome("invalid", "Your card's expiration date is incomplete.")
        today = dt.datetime.fromtimestamp(self.now(), dt.UTC)
        if expiry < (today.year, today.month):
            return PayOutcome("invalid", "Your card's expiration date is in the past.")
        if not re.fullmatch(r"\d{3,4}", form.get("cvc", "").strip()):
            return PayOutcome("invalid", "Your card's security code is incomplete.")

        if not apply_promotion_code(session, form.get("promotion_code", "")):
            return PayOutcome("invalid", "This code is invalid.")
        pi = self._payment_intent_for(session, email)
        pi["payment_method"] = new_id("pm")
        self.challenges.pop(pi["id"], None)  # a new card replaces a pending challenge
        if card.result == DECLINED:
            charge = self._charge(pi, email, expiry, card)
            pi.update(
                status="requires_payment_method",
                latest_charge=charge["id"],
                next_action=None,
                last_payment_error=card.payment_error(charge["id"]),
            )
            # Stripe's order for a declined Checkout payment: the charge, then the intent.
            events = [
                self._event("charge.failed", charge),
                self._event("payment_intent.payment_failed", pi),
            ]
            return PayOutcome("declined", card.message, events=events)
        if card.result == AUTHENTICATE:
            self.challenges[pi["id"]] = (email, card, expiry)
            pi.update(
                status="requires_action",
                last_payment_error=None,
                next_action={
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect"},
                },
            )
            return PayOutcome(
                "authenticate",
                redirect_url=f"/pay/{session_id}/authenticate",
                events=[self._event("payment_intent.requires_action", pi)],
            )
        return self._succeed(session, pi, email, expiry, card)

    def pending_challenge(self, session_id: str) -> Obj | None:
        """The session's PaymentIntent while it waits for 3-D Secure, else None."""
        session = self.sessions.get(session_id)
        pi_id = session["payment_intent"] if session and session["status"] == "open" else None
        return self.payment_intents[pi_id] if pi_id in self.challenges else None

    def authenticate(self, session_id: str, complete: bool) -> PayOutcome:
        """The buyer's answer to the 3-D Secure challenge: charge the card, or fail the intent."""
        pi = self.pending_challenge(session_id)
        if pi is None:
            return PayOutcome("invalid", "No authentication is waiting for this payment.")
        email, card, expiry = self.challenges.pop(pi["id"])
        pi["next_action"] = None
        if complete:
            session = self.sessions[session_id]
            return self._succeed(session, pi, email, expiry, card)
        pi.update(
            status="requires_payment_method",
            last_payment_error={
                **AUTHENTICATION_FAILED,
                "payment_method": {"id": pi["payment_method"], "object": "payment_method"},
            },
        )
        event = self._event("payment_intent.payment_failed", pi)
        return PayOutcome("declined", AUTHENTICATION_FAILED["message"], events=[event])

    def _succeed(
        self, session: Obj, pi: Obj, email: str, expiry: tuple[int, int], card: Card
    ) -> PayOutcome:
        """Charge the card, complete the session; the events Stripe sends for a paid Checkout."""
        charge = self._charge(pi, email, expiry, card)
        if pi.get("setup_future_usage") == "off_session" and pi["customer"]:
            self.save_card(pi["customer"], pi["payment_method"], card, expiry, email)  # type: ignore[attr-defined]
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            latest_charge=charge["id"],
            last_payment_error=None,
            next_action=None,
        )
        session.update(
            status="complete",
            payment_status="paid",
            url=None,
            customer_details={"email": email, "name": None, "phone": None, "address": None},
        )
        events = [
            self._event("checkout.session.completed", session),
            self._event("payment_intent.succeeded", pi),
            self._event("charge.succeeded", charge),
        ]
        redirect_url = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
        return PayOutcome("paid", redirect_url=redirect_url, events=events)

    def _payment_intent_for(self, session: Obj, email: str) -> Obj:
        """Return the session's PaymentIntent, creating it on the first attempt."""
        if session["payment_intent"]:
            return self.payment_intents[session["payment_intent"]]
        data = self.pi_data[session["id"]]
        pi = {
            "id": new_id("pi"),
            "object": "payment_intent",
            "amount": session["amount_total"],
            "amount_capturable": 0,
            "amount_received": 0,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": self.now(),
            "currency": session["currency"],
            "customer": session["customer"],
            "description": data["description"],
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(data["metadata"]),
            "next_action": None,
            "payment_method": None,
            "payment_method_types": ["card"],
            "receipt_email": data["receipt_email"] or email,
            "setup_future_usage": data.get("setup_future_usage"),
            "status": "requires_payment_method",
        }
        self.payment_intents[pi["id"]] = pi
        session["payment_intent"] = pi["id"]
        return pi

    def _charge(self, pi: Obj, email: str, expiry: tuple[int, int], card: Card) -> Obj:
        declined = card.result == DECLINED
        payment_method = pi["payment_method"]
        charge_id = new_id("ch")
        charge = {
            "id": charge_id,
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": 0 if declined else pi["amount"],
            "amount_refunded": 0,
            "billing_details": {"email": email, "name": None, "phone": None, "address": None},
            "captured": not declined,
            "created": self.now(),
            "currency": pi["currency"],
            "description": pi["description"],
            "disputed": False,
            "failure_code": "card_declined" if declined else None,
            "failure_message": card.message if declined else None,
            "livemode": False,
            "metadata": dict(pi["metadata"]),
            "outcome": {
                "network_status": "declined_by_network" if declined else "approved_by_network",
                "reason": card.decline_code if declined else None,
                "type": "issuer_declined" if declined else "authorized",
            },
            "paid": not declined,
            "payment_intent": pi["id"],
            "payment_method": payment_method,
            "payment_method_details": {
                "type": "card",
                "card": card.details(expiry),
            },
            "receipt_email": pi["receipt_email"],
            "receipt_url": None
            if declined
            else f"{self.config.public_url.rstrip('/')}/receipts/{charge_id}",
            "refunded": False,
            "status": "failed" if declined else "succeeded",
        }
        self.charges[charge_id] = charge
        return charge

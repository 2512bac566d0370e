"""The test cards the Checkout emulator accepts, and what each does, as on Stripe.

The same four cards the product's docs list (docs/stripe.md, docs/emulator.md): a success, a
generic decline, a decline for insufficient funds, and a card that needs 3-D Secure
authentication before it is charged. Kept apart from the emulator so the pay page, the docs
and the tests read one table.
"""

from __future__ import annotations

from dataclasses import dataclass

SUCCEEDS, DECLINED, AUTHENTICATE = "succeeds", "declined", "authenticate"


@dataclass(frozen=True)
class Card:
    number: str  # digits only
    result: str  # SUCCEEDS | DECLINED | AUTHENTICATE
    what: str  # how the pay page's hint describes it
    decline_code: str | None = None  # Stripe's charge outcome reason / last_payment_error
    message: str | None = None  # what Stripe's hosted page says on a decline

    @property
    def spaced(self) -> str:
        return " ".join(self.number[i : i + 4] for i in range(0, len(self.number), 4))

    def details(self, expiry: tuple[int, int]) -> dict:
        """The ``card`` hash Stripe shows on a charge or a saved payment method; expiry is
        (year, month)."""
        return {
            "brand": "visa",
            "country": "US",
            "exp_month": expiry[1],
            "exp_year": expiry[0],
            "funding": "credit",
            "last4": self.number[-4:],
        }

    def payment_error(self, charge_id: str) -> dict:
        """A PaymentIntent's ``last_payment_error`` after this card declined ``charge_id``."""
        return {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": self.decline_code,
            "message": self.message,
            "charge": charge_id,
        }


CARDS: dict[str, Card] = {
    card.number: card
    for card in (
        Card("4242424242424242", SUCCEEDS, "succeeds"),
        Card(
            "4000000000000002",
            DECLINED,
            "is declined",
            "generic_decline",
            "Your card was declined.",
        ),
        Card(
            "4000000000009995",
            DECLINED,
            "is declined for insufficient funds",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        Card("4000002500003155", AUTHENTICATE, "asks for 3-D Secure authentication"),
    )
}

# PaymentIntent.last_payment_error when the buyer fails the 3-D Secure challenge: no charge
# is attempted, so Stripe sends payment_intent.payment_failed and no charge.failed.
AUTHENTICATION_FAILED = {
    "type": "invalid_request_error",
    "code": "payment_intent_authentication_failure",
    "message": "We are unable to authenticate your payment method. Please choose a different "
    "payment method and try again.",
}


# The one promotion code the emulator knows (on sessions created with allow_promotion_codes):
# 20 % off, as a Stripe coupon and customer-facing code would be.
PROMOTION_CODE = "TOKENS20"
PROMOTION_CODE_ID = "promo_emulator_tokens20"
COUPON_ID = "coupon_emulator_20_off"
PERCENT_OFF = 20


def apply_promotion_code(session: dict, code: str) -> bool:
    """Lower an open session's total by the emulator's promotion code before any payment
    attempt (the PaymentIntent is then created for the discounted total, as on Stripe).
    True when there is nothing to apply or it applied; False for a code the session refuses."""
    code = code.strip().upper()
    if not code:
        return True
    if code != PROMOTION_CODE or not session.get("allow_promotion_codes"):
        return False
    if session["payment_intent"] or session["discounts"]:
        return bool(session["discounts"])  # already applied, or too late to change
    discount = session["amount_subtotal"] * PERCENT_OFF // 100
    session["amount_total"] = session["amount_subtotal"] - discount
    session["total_details"] = {**session["total_details"], "amount_discount": discount}
    session["discounts"] = [{"coupon": COUPON_ID, "promotion_code": PROMOTION_CODE_ID}]
    return True

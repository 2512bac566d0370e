"""The whole emulator's state: sessions, payments and refunds on one lock."""

from __future__ import annotations

from workshop.emulator.config import (
    RequestInfo,
)
from workshop.emulator.customers import Customers
from workshop.emulator.wire import (
    ApiError,
    Obj,
    _as_int,
    _as_str,
    _invalid,
    _metadata,
    format_amount,
    new_id,
)


class Emulator(Customers):
    """In-memory Stripe state. Callers hold ``lock`` around every method except ``deliver``.

    Built in layers by concern: Store (objects), Events (webhooks), Sessions, Payments,
    Customers (saved cards, off-session charges), and refunds here."""

    def refund(self, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
        """Refund all or part of a succeeded charge; emit charge.refunded."""
        for name in params:
            if name not in {"charge", "payment_intent", "amount", "reason", "metadata", "expand"}:
                raise ApiError(400, f"Received unknown parameter: {name}", param=name)
        charge_id, pi_id = params.get("charge"), params.get("payment_intent")
        if not charge_id and not pi_id:
            raise ApiError(
                400,
                "One of the following params should be provided for this "
                "request: payment_intent or charge.",
            )
        if pi_id:
            pi = self.get("payment_intent", _as_str(pi_id, "payment_intent"))
            if pi["status"] != "succeeded":
                raise ApiError(
                    400,
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    code="charge_not_refundable",
                )
            if charge_id and charge_id != pi["latest_charge"]:
                raise _invalid("charge", "The charge does not belong to that PaymentIntent.")
            charge_id = pi["latest_charge"]
        charge = self.get("charge", _as_str(charge_id, "charge"))
        if charge["status"] != "succeeded":
            raise ApiError(
                400,
                f"Charge {charge['id']} has not succeeded and cannot be refunded.",
                code="charge_not_refundable",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining == 0:
            raise ApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = _as_int(params["amount"], "amount", 1) if "amount" in params else remaining
        if amount > remaining:
            raise ApiError(
                400,
                f"Refund amount ({format_amount(amount, charge['currency'])}) is greater than "
                f"unrefunded amount on charge ({format_amount(remaining, charge['currency'])})",
                code="amount_too_large",
                param="amount",
            )
        reason = params.get("reason")
        if reason is not None and reason not in (
            "duplicate",
            "fraudulent",
            "requested_by_customer",
        ):
            raise _invalid("reason", f"Invalid reason: {reason}")
        refund = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": self.now(),
            "currency": charge["currency"],
            "metadata": _metadata(params.get("metadata", {}), "metadata"),
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        events = [
            self._event("refund.created", refund, info),
            self._event("charge.refunded", charge, info),
        ]
        return refund, events

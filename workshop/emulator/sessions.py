"""Checkout Sessions: create, list, line items, expire."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from workshop.emulator.config import (
    _SESSION_PARAMS,
    RequestInfo,
)
from workshop.emulator.events import Events
from workshop.emulator.wire import (
    _ZERO_DECIMAL,
    SESSION_LIFETIME,
    ApiError,
    Obj,
    _as_dict,
    _as_int,
    _as_str,
    _as_url,
    _created_matches,
    _invalid,
    _metadata,
    _missing,
    _not_found,
    format_amount,
    new_id,
)


def _customer(customers: dict[str, Obj], params: Obj) -> tuple[str | None, str | None]:
    """The session's ``customer`` (which must exist) and its email, the buyer's."""
    if "customer" not in params:
        return None, None
    customer = _as_str(params["customer"], "customer")
    if customer not in customers:
        raise _not_found("customer", customer, "customer")
    return customer, customers[customer]["email"]


class Sessions(Events):
    """Checkout Sessions and their line items, with Stripe's validation."""

    def expire_due(self) -> list[Obj]:
        """Expire open sessions whose expires_at has passed; return the events to send."""
        now = self.now()
        events = []
        for session in self.sessions.values():
            if session["status"] == "open" and session["expires_at"] <= now:
                events.append(self._expire(session, None))
        return events

    def _expire(self, session: Obj, info: RequestInfo | None) -> Obj:
        session.update(status="expired", url=None)
        return self._event("checkout.session.expired", session, info)

    def expire_session(self, session_id: str, info: RequestInfo) -> tuple[Obj, list[Obj]]:
        session = self.get("checkout.session", session_id)
        if session["status"] != "open":
            raise ApiError(400, 'Only Checkout Sessions with a status in ["open"] can be expired.')
        return session, [self._expire(session, info)]

    def _line_item(self, raw: Any, index: int) -> tuple[Obj, str]:
        param = f"line_items[{index}]"
        item = _as_dict(raw, param)
        if "quantity" not in item:
            raise _missing(f"{param}[quantity]")
        quantity = _as_int(item["quantity"], f"{param}[quantity]", 1)
        if ("price" in item) == ("price_data" in item):
            raise _invalid(param, f"You must specify either `price` or `price_data` in `{param}`.")
        if "price" in item:
            price_id = _as_str(item["price"], f"{param}[price]")
            known = self.config.prices.get(price_id)
            if known is None:
                raise ApiError(
                    400,
                    f"No such price: '{price_id}'",
                    code="resource_missing",
                    param=f"{param}[price]",
                )
            unit_amount, currency, name = known["unit_amount"], known["currency"], known["name"]
            product = f"prod_{hashlib.sha1(price_id.encode()).hexdigest()[:14]}"
        else:
            data = _as_dict(item["price_data"], f"{param}[price_data]")
            for required in ("currency", "unit_amount"):
                if required not in data:
                    raise _missing(f"{param}[price_data][{required}]")
            currency = _as_str(data["currency"], f"{param}[price_data][currency]").lower()
            if not re.fullmatch(r"[a-z]{3}", currency):
                raise _invalid(f"{param}[price_data][currency]", f"Invalid currency: {currency}")
            unit_amount = _as_int(data["unit_amount"], f"{param}[price_data][unit_amount]", 0)
            if "product_data" in data:
                product_data = _as_dict(data["product_data"], f"{param}[price_data][product_data]")
                if not product_data.get("name"):
                    raise _missing(f"{param}[price_data][product_data][name]")
                name = _as_str(product_data["name"], f"{param}[price_data][product_data][name]")
                product = new_id("prod", 14)
            elif "product" in data:
                product = name = _as_str(data["product"], f"{param}[price_data][product]")
            else:
                raise _missing(f"{param}[price_data][product_data]")
            price_id = new_id("price")
        amount = unit_amount * quantity
        line = {
            "id": new_id("li"),
            "object": "item",
            "amount_discount": 0,
            "amount_subtotal": amount,
            "amount_tax": 0,
            "amount_total": amount,
            "currency": currency,
            "description": name,
            "price": {
                "id": price_id,
                "object": "price",
                "active": True,
                "currency": currency,
                "livemode": False,
                "product": product,
                "type": "one_time",
                "unit_amount": unit_amount,
            },
            "quantity": quantity,
        }
        return line, currency

    def create_session(self, params: Obj) -> Obj:
        """Validate create params like Stripe does and store an open session."""
        for name in params:
            if name not in _SESSION_PARAMS:
                raise ApiError(400, f"Received unknown parameter: {name}", param=name)
        mode = params.get("mode")
        if not mode:
            raise _missing("mode")
        if mode != "payment":
            raise _invalid("mode", f"The checkout emulator only supports mode=payment, not {mode}.")
        if "success_url" not in params:
            raise _missing("success_url")
        success_url = _as_url(params["success_url"], "success_url")
        cancel_url = _as_url(params["cancel_url"], "cancel_url") if "cancel_url" in params else None
        raw_items = params.get("line_items")
        if not raw_items:
            raise _missing("line_items")
        if not isinstance(raw_items, list):
            raise _invalid("line_items", "Invalid array: line_items must be a list")
        items: list[Obj] = []
        currencies = set()
        for index, raw in enumerate(raw_items):
            line, currency = self._line_item(raw, index)
            items.append(line)
            currencies.add(currency)
        if len(currencies) > 1:
            raise _invalid("line_items", "Checkout does not support multiple currencies.")
        currency = currencies.pop()
        total = sum(line["amount_total"] for line in items)
        if currency not in _ZERO_DECIMAL and total < 50:
            raise _invalid(
                "line_items",
                f"The Checkout Session's total amount due must add up to at least "
                f"{format_amount(50, currency)} {currency}",
            )
        customer, email = _customer(self.customers, params)
        if "customer_email" in params:
            email = _as_str(params["customer_email"], "customer_email", 512)
            if not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
                raise _invalid("customer_email", f"Invalid email address: {email}")
        reference = None
        if "client_reference_id" in params:
            reference = _as_str(params["client_reference_id"], "client_reference_id", 200)
        pi_data = _as_dict(params.get("payment_intent_data", {}), "payment_intent_data")
        pi_metadata = _metadata(pi_data.get("metadata", {}), "payment_intent_data[metadata]")
        now = self.now()
        expires_at = now + SESSION_LIFETIME
        if "expires_at" in params:
            expires_at = _as_int(params["expires_at"], "expires_at")
            if not now < expires_at <= now + SESSION_LIFETIME:
                raise _invalid("expires_at", "expires_at must be in the next 24 hours.")
        session_id = new_id("cs_test", 58)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "cancel_url": cancel_url,
            "client_reference_id": reference,
            "created": now,
            "currency": currency,
            "customer": customer,
            "customer_details": None,
            "customer_email": email,
            "expires_at": expires_at,
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": _metadata(params.get("metadata", {}), "metadata"),
            "mode": "payment",
            "payment_intent": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": success_url,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{self.config.public_url.rstrip('/')}/pay/{session_id}",
        }
        self.sessions[session_id] = session
        self.line_items[session_id] = items
        self.pi_data[session_id] = {
            "metadata": pi_metadata,
            "description": pi_data.get("description"),
            "receipt_email": pi_data.get("receipt_email"),
            "setup_future_usage": pi_data.get("setup_future_usage"),
        }
        session["allow_promotion_codes"] = params.get("allow_promotion_codes") == "true"
        session["discounts"] = []
        return session

    def list_sessions(self, params: Obj) -> Obj:
        items = list(reversed(self.sessions.values()))
        if status := params.get("status"):
            if status not in ("open", "complete", "expired"):
                raise _invalid("status", f"Invalid status: {status}")
            items = [s for s in items if s["status"] == status]
        if pi := params.get("payment_intent"):
            items = [s for s in items if s["payment_intent"] == pi]
        if "created" in params:
            items = [s for s in items if _created_matches(s["created"], params["created"])]
        return self._page(items, params, "/v1/checkout/sessions")

    def line_items_list(self, session_id: str, params: Obj) -> Obj:
        self.get("checkout.session", session_id)
        return self._page(
            list(self.line_items[session_id]),
            params,
            f"/v1/checkout/sessions/{session_id}/line_items",
        )

"""A local stand-in for Stripe-hosted Checkout, for offline development and browser tests.

Why this exists: stripe-mock is stateless and sends no webhooks, and real Stripe needs network
and keys. This small Flask app keeps Checkout Sessions, PaymentIntents, Charges, Refunds and
Events in memory, speaks Stripe's wire format (form-encoded nested params in, JSON objects and
Stripe-shaped errors out), serves a simulated hosted pay page, and delivers webhooks signed
exactly like Stripe's, so the app's real Checkout and webhook code runs end to end.

It is a development tool: the production app never imports it (it lives under scripts/).

CLI::

    python -m workshop.emulator [--host 127.0.0.1] [--port 12112]
        [--webhook-url http://127.0.0.1:5000/api/webhook/stripe] [--public-url URL]
        [--price price_x=500:usd:Name ...]

The webhook signing secret comes from STRIPE_WEBHOOK_SECRET (default whsec_emulator_local).
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import random
import re
import secrets
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe
from flask import Blueprint, Flask, Response, current_app, redirect, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from workshop.emulator.cards import AUTHENTICATE, AUTHENTICATION_FAILED, CARDS, DECLINED, Card

log = logging.getLogger("tokenbill.checkout_emulator")

DEFAULT_PORT = 12112
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:5000/api/webhook/stripe"
DEFAULT_WEBHOOK_SECRET = "whsec_emulator_local"
API_VERSION = stripe.api_version
TEMPLATES = Path(__file__).resolve().parent / "templates"

SESSION_LIFETIME = 24 * 3600
# The event types docs/stripe.md tells operators to select for the app's webhook endpoint.
# Like Stripe, the emulator creates every event (GET /v1/events lists them) but delivers only
# the types the endpoint listens to, so the admin inbox is not filled with ignored events.
DEFAULT_ENABLED_EVENTS = frozenset(
    """checkout.session.completed checkout.session.async_payment_succeeded
    checkout.session.async_payment_failed checkout.session.expired payment_intent.succeeded
    payment_intent.payment_failed charge.succeeded charge.refunded charge.dispute.created
    charge.dispute.closed""".split()  # noqa: SIM905
)

Obj = dict[str, Any]


# --------------------------------------------------------------------------- small helpers


def new_id(prefix: str, length: int = 24) -> str:
    """Return a Stripe-looking id such as ``cs_test_a1B2...``."""
    alphabet = string.ascii_letters + string.digits
    return f"{prefix}_" + "".join(secrets.choice(alphabet) for _ in range(length))


_ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def format_amount(amount: int, currency: str) -> str:
    """Format integer minor units for people (500, "usd" -> "$5.00")."""
    if currency in _ZERO_DECIMAL:
        return f"{amount:,} {currency.upper()}"
    major = f"{amount // 100:,}.{amount % 100:02d}"
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{major}" if symbol else f"{major} {currency.upper()}"


# --------------------------------------------------------------------------- request params


class ParamError(ValueError):
    """A form key or value that Stripe's encoding cannot produce."""


_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")


def split_key(key: str) -> list[str]:
    """Split ``a[b][0][]`` into ``["a", "b", "0", ""]``."""
    match = _KEY_RE.fullmatch(key)
    if not match:
        raise ParamError(f"Invalid parameter name: {key!r}")
    return [match.group(1), *_SEGMENT_RE.findall(match.group(2))]


def parse_params(
    pairs: Iterable[tuple[str, str]], keep_dicts: frozenset[str] = frozenset({"metadata"})
) -> Obj:
    """Turn Stripe's form encoding into nested dicts and lists.

    stripe-python sends ``line_items[0][price_data][unit_amount]=500`` and ``expand[0]=x``;
    curl users write ``expand[]=x``. Dicts whose keys are all indices become lists, except
    under ``keep_dicts`` keys (metadata may legitimately have keys like "0").
    """
    root: Obj = {}
    for key, value in pairs:
        segments = split_key(key)
        if "" in segments[:-1]:
            raise ParamError(f"Invalid parameter name: {key!r} ('[]' must come last)")
        appending = segments[-1] == ""
        path = segments[:-1] if appending else segments
        node = root
        for segment in path[:-1]:
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                raise ParamError(f"Conflicting values for parameter {key!r}")
            node = child
        leaf = path[-1]
        if appending:
            items = node.setdefault(leaf, [])
            if not isinstance(items, list):
                raise ParamError(f"Conflicting values for parameter {key!r}")
            items.append(value)
        else:
            if isinstance(node.get(leaf), dict | list):
                raise ParamError(f"Conflicting values for parameter {key!r}")
            node[leaf] = value
    return _listify(root, None, keep_dicts)


def _listify(node: Any, key: str | None, keep_dicts: frozenset[str]) -> Any:
    """Convert index-keyed dicts into lists, depth first."""
    if isinstance(node, list):
        return [_listify(item, None, keep_dicts) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v, k, keep_dicts) for k, v in node.items()}
    if converted and key not in keep_dicts and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered in Stripe's JSON error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> Obj:
        """Return ``{"error": {...}}`` like Stripe."""
        error = {"type": self.type, "message": self.message, "code": self.code, "param": self.param}
        return {"error": {k: v for k, v in error.items() if v is not None}}


def _missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="parameter_invalid", param=param)


def _not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def _as_int(value: Any, param: str, minimum: int | None = None) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(param, f"Invalid integer: {value}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise _invalid(param, f"Invalid {param}: must be at least {minimum}")
    return number


def _as_str(value: Any, param: str, max_length: int = 5000) -> str:
    if not isinstance(value, str):
        raise _invalid(param, f"Invalid string: {param} must be a string")
    if len(value) > max_length:
        raise _invalid(param, f"Invalid {param}: must be at most {max_length} characters")
    return value


def _as_dict(value: Any, param: str) -> Obj:
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid(param, f"Invalid object: {param} must be a hash")
    return value


def _as_url(value: Any, param: str) -> str:
    url = _as_str(value, param, 2048)
    if not re.match(r"https?://[^\s/]+", url):
        raise _invalid(param, f"Not a valid URL: {param}")
    return url


def _metadata(value: Any, param: str) -> dict[str, str]:
    """Validate metadata like Stripe: 50 keys, 40-char keys, 500-char string values."""
    data = _as_dict(value, param)
    if len(data) > 50:
        raise _invalid(param, "Metadata can have at most 50 keys")
    out: dict[str, str] = {}
    for key, item in data.items():
        if len(key) > 40:
            raise _invalid(f"{param}[{key}]", "Metadata keys can be at most 40 characters")
        text = _as_str(item, f"{param}[{key}]", 500)
        if text != "":  # an empty value unsets the key in Stripe
            out[key] = text
    return out


def _expand_paths(params: Obj) -> list[str]:
    value = params.get("expand", [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _invalid("expand", "Invalid array: expand must be a list of strings")
    return values


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


class Emulator:
    """In-memory Stripe state. Callers hold ``lock`` around every method except ``deliver``."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.sessions: dict[str, Obj] = {}
        self.line_items: dict[str, list[Obj]] = {}
        self.pi_data: dict[str, Obj] = {}  # session id -> payment_intent_data
        self.payment_intents: dict[str, Obj] = {}
        self.charges: dict[str, Obj] = {}
        self.refunds: dict[str, Obj] = {}
        self.events: dict[str, Obj] = {}
        self.idempotency: dict[tuple[str, str], tuple[str, int, Obj]] = {}
        self.deliveries: list[Delivery] = []
        # PaymentIntent id -> the card waiting for its 3-D Secure challenge (email, card, expiry)
        self.challenges: dict[str, tuple[str, Card, tuple[int, int]]] = {}
        self.rng = random.Random(config.seed)

    def now(self) -> int:
        return int(self.clock())

    # ----------------------------------------------------------------- lookups and rendering

    def _store_for(self, object_id: str) -> tuple[str, dict[str, Obj]]:
        for prefix, kind, store in (
            ("cs_", "checkout.session", self.sessions),
            ("pi_", "payment_intent", self.payment_intents),
            ("ch_", "charge", self.charges),
            ("re_", "refund", self.refunds),
            ("evt_", "event", self.events),
        ):
            if object_id.startswith(prefix):
                return kind, store
        return "object", {}

    def get(self, kind: str, object_id: str) -> Obj:
        """Return the stored object or raise Stripe's 404."""
        found_kind, store = self._store_for(object_id)
        if found_kind != kind or object_id not in store:
            raise _not_found(kind, object_id)
        return store[object_id]

    def render(self, obj: Obj, expand: list[str]) -> Obj:
        """Return a snapshot of obj with the requested ``expand[]`` paths resolved."""
        out = copy.deepcopy(obj)
        for path in expand:
            parts = path.split(".")
            if len(parts) > 4:
                raise _invalid("expand", f"You cannot expand more than 4 levels ({path}).")
            self._expand(out, parts, path)
        return out

    def _expand(self, obj: Any, parts: list[str], path: str) -> None:
        if not isinstance(obj, dict):
            return  # null (e.g. no payment_intent yet) stays null, like Stripe
        head, rest = parts[0], parts[1:]
        kind = obj.get("object")
        if kind == "list" and head == "data" and rest:
            for item in obj["data"]:
                self._expand(item, rest, path)
            return
        if head not in _EXPANDABLE.get(str(kind), ()):
            raise _invalid("expand", f"This property cannot be expanded ({path}).")
        value = obj.get(head)
        if kind == "checkout.session" and head == "line_items":
            value = obj[head] = self.line_items_list(obj["id"], {})
        elif isinstance(value, str):
            value = obj[head] = copy.deepcopy(self._store_for(value)[1][value])
        if rest:
            self._expand(value, rest, path)

    def _page(self, items: list[Obj], params: Obj, url: str) -> Obj:
        """Paginate newest-first items with limit / starting_after / ending_before."""
        limit = _as_int(params.get("limit", "10"), "limit", 1)
        if limit > 100:
            raise _invalid("limit", "Invalid limit: must be at most 100")
        ids = [item["id"] for item in items]
        if after := params.get("starting_after"):
            if after not in ids:
                raise _not_found("object", str(after), "starting_after")
            items = items[ids.index(after) + 1 :]
        elif before := params.get("ending_before"):
            if before not in ids:
                raise _not_found("object", str(before), "ending_before")
            items = items[: ids.index(before)][-limit:]
        return {
            "object": "list",
            "data": items[:limit],
            "has_more": len(items) > limit,
            "url": url,
        }

    # ----------------------------------------------------------------- events

    def _event(self, type_: str, obj: Obj, info: RequestInfo | None = None) -> Obj:
        info = info or RequestInfo()
        event = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 1 if self.config.webhook_url and self.enabled(type_) else 0,
            "request": {"id": info.id, "idempotency_key": info.idempotency_key},
            "type": type_,
        }
        self.events[event["id"]] = event
        return event

    def list_events(self, params: Obj) -> Obj:
        items = list(reversed(self.events.values()))
        if type_ := params.get("type"):
            items = [e for e in items if e["type"] == type_]
        return self._page(items, params, "/v1/events")

    def enabled(self, type_: str) -> bool:
        """Whether the webhook endpoint listens to this event type."""
        return self.config.enabled_events is None or type_ in self.config.enabled_events

    def deliver(self, events: list[Obj], *, duplicate: bool = False) -> None:
        """POST the enabled events to the webhook URL in random order (one twice if
        ``duplicate``).

        Called WITHOUT the lock: the receiving app may call back into this emulator.
        """
        events = [event for event in events if self.enabled(event["type"])]
        if not events:
            return
        batch = list(events)
        with self.lock:
            if duplicate:
                batch.append(self.rng.choice(events))
            self.rng.shuffle(batch)
        for event in batch:
            self._send(event)

    def _send(self, event: Obj) -> bool:
        url = self.config.webhook_url
        if not url:
            log.info("event %s %s not delivered (no webhook URL)", event["id"], event["type"])
            return False
        body = json.dumps(event, indent=2)
        # Proxies never sit between a developer's two local processes.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        attempts = max(1, self.config.webhook_attempts)
        for attempt in range(1, attempts + 1):
            header = stripe.WebhookSignature.generate_signature_header(
                body, self.config.webhook_secret, timestamp=int(time.time())
            )
            req = urllib.request.Request(
                url,
                data=body.encode("utf-8"),
                method="POST",
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": header,
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                },
            )
            status: int | None = None
            error: str | None = None
            try:
                with opener.open(req, timeout=self.config.webhook_timeout) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError as exc:
                error = str(exc)
            with self.lock:
                self.deliveries.append(Delivery(event["id"], event["type"], attempt, status, error))
            log.info(
                "webhook %s %s -> %s (attempt %d/%d)",
                event["id"],
                event["type"],
                status if status is not None else error,
                attempt,
                attempts,
            )
            if status is not None and 200 <= status < 300:
                return True
            if attempt < attempts:
                time.sleep(self.config.webhook_backoff * 2 ** (attempt - 1))
        log.error(
            "webhook %s %s: giving up after %d attempts", event["id"], event["type"], attempts
        )
        return False

    # ----------------------------------------------------------------- checkout sessions

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
        email = None
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
            "customer": None,
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
        }
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

    # ----------------------------------------------------------------- the pay page

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

        pi = self._payment_intent_for(session, email)
        pi["payment_method"] = new_id("pm")
        self.challenges.pop(pi["id"], None)  # a new card replaces a pending challenge
        if card.result == DECLINED:
            charge = self._charge(pi, email, expiry, card)
            pi.update(
                status="requires_payment_method",
                latest_charge=charge["id"],
                next_action=None,
                last_payment_error={
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": card.decline_code,
                    "message": card.message,
                    "charge": charge["id"],
                },
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
            "customer": None,
            "description": data["description"],
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(data["metadata"]),
            "next_action": None,
            "payment_method": None,
            "payment_method_types": ["card"],
            "receipt_email": data["receipt_email"] or email,
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
                "card": {
                    "brand": "visa",
                    "country": "US",
                    "exp_month": expiry[1],
                    "exp_year": expiry[0],
                    "funding": "credit",
                    "last4": card.number[-4:],
                },
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

    # ----------------------------------------------------------------- refunds

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


def _created_matches(created: int, condition: Any) -> bool:
    """Apply Stripe's ``created`` list filter (an int or gt/gte/lt/lte)."""
    if isinstance(condition, str):
        return created == _as_int(condition, "created")
    checks = {
        "gt": lambda bound: created > bound,
        "gte": lambda bound: created >= bound,
        "lt": lambda bound: created < bound,
        "lte": lambda bound: created <= bound,
    }
    for op, value in _as_dict(condition, "created").items():
        if op not in checks:
            raise ApiError(
                400, f"Received unknown parameter: created[{op}]", param=f"created[{op}]"
            )
        if not checks[op](_as_int(value, f"created[{op}]")):
            return False
    return True


def _parse_expiry(text: str) -> tuple[int, int] | None:
    """Parse "MM / YY", "MM/YYYY" or "MMYY" into (year, month)."""
    match = re.fullmatch(r"(\d{1,2})\s*/?\s*(\d{2}|\d{4})", text.strip())
    if not match:
        return None
    month, year = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        return None
    return (year + 2000 if year < 100 else year, month)


# --------------------------------------------------------------------------- HTTP layer

bp = Blueprint("checkout_emulator", __name__)


def _emulator() -> Emulator:
    return current_app.extensions["checkout_emulator"]


def _json(status: int, body: Obj, request_id: str) -> Response:
    resp = Response(json.dumps(body, indent=2), status=status, mimetype="application/json")
    resp.headers["Request-Id"] = request_id
    resp.headers["Stripe-Version"] = API_VERSION
    return resp


def _api_key() -> str:
    """Return the caller's test secret key, or raise Stripe's 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = credential.strip()
    elif scheme.lower() == "basic":  # curl -u sk_test_...:
        try:
            key = base64.b64decode(credential).decode("utf-8").partition(":")[0]
        except ValueError:
            key = ""
    if not key:
        raise ApiError(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
        )
    if not re.fullmatch(r"(sk|rk)_test_\w+", key):
        raise ApiError(
            401,
            f"Invalid API Key provided: {key[:8]}****. The checkout emulator only accepts "
            "test-mode secret keys (sk_test_...).",
        )
    return key


Handler = Callable[..., tuple[Obj, list[Obj]]]


def api_view(idempotent: bool = False) -> Callable[[Handler], Callable[..., Response]]:
    """Wrap a handler with auth, param parsing, Stripe errors, idempotency and event delivery.

    Handlers run under the emulator lock and return ``(body, events)``; events are delivered
    after the lock is released and before the response is sent.
    """

    def decorate(handler: Handler) -> Callable[..., Response]:
        @functools.wraps(handler)
        def view(**kwargs: str) -> Response:
            emu = _emulator()
            request_id = new_id("req", 14)
            source = request.form if request.method == "POST" else request.args
            pairs = list(source.items(multi=True))
            try:
                api_key = _api_key()
                params = parse_params(pairs)
            except ParamError as exc:
                return _json(400, ApiError(400, str(exc)).body(), request_id)
            except ApiError as exc:
                return _json(exc.status, exc.body(), request_id)
            key = request.headers.get("Idempotency-Key") if idempotent else None
            fingerprint = json.dumps([request.method, request.path, sorted(pairs)])
            replayed = False
            with emu.lock:
                events = emu.expire_due()
                stored = emu.idempotency.get((api_key, key)) if key else None
                if stored and stored[0] == fingerprint:
                    _, status, body = stored
                    replayed = True
                elif stored:
                    status, body = (
                        400,
                        ApiError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{key}' if you meant to execute a different request.",
                            type_="idempotency_error",
                        ).body(),
                    )
                else:
                    try:
                        body, new_events = handler(
                            emu, params, RequestInfo(request_id, key), **kwargs
                        )
                        status = 200
                        events.extend(new_events)
                    except ApiError as exc:
                        status, body = exc.status, exc.body()
                    if key:
                        emu.idempotency[(api_key, key)] = (fingerprint, status, body)
            emu.deliver(events)
            resp = _json(status, body, request_id)
            if replayed:
                resp.headers["Idempotent-Replayed"] = "true"
            return resp

        return view

    return decorate


@bp.post("/v1/checkout/sessions")
@api_view(idempotent=True)
def create_session(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    session = emu.create_session(params)
    return emu.render(session, _expand_paths(params)), []


@bp.get("/v1/checkout/sessions")
@api_view()
def list_sessions(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    return emu.render(emu.list_sessions(params), _expand_paths(params)), []


@bp.get("/v1/checkout/sessions/<session_id>")
@api_view()
def get_session(
    emu: Emulator, params: Obj, info: RequestInfo, session_id: str
) -> tuple[Obj, list[Obj]]:
    return emu.render(emu.get("checkout.session", session_id), _expand_paths(params)), []


@bp.get("/v1/checkout/sessions/<session_id>/line_items")
@api_view()
def get_line_items(
    emu: Emulator, params: Obj, info: RequestInfo, session_id: str
) -> tuple[Obj, list[Obj]]:
    return emu.line_items_list(session_id, params), []


@bp.post("/v1/checkout/sessions/<session_id>/expire")
@api_view(idempotent=True)
def expire_session(
    emu: Emulator, params: Obj, info: RequestInfo, session_id: str
) -> tuple[Obj, list[Obj]]:
    session, events = emu.expire_session(session_id, info)
    return emu.render(session, _expand_paths(params)), events


def _getter(kind: str) -> Handler:
    def handler(
        emu: Emulator, params: Obj, info: RequestInfo, object_id: str
    ) -> tuple[Obj, list[Obj]]:
        return emu.render(emu.get(kind, object_id), _expand_paths(params)), []

    handler.__name__ = f"get_{kind}"
    return handler


for _kind, _rule in (
    ("payment_intent", "/v1/payment_intents/<object_id>"),
    ("charge", "/v1/charges/<object_id>"),
    ("refund", "/v1/refunds/<object_id>"),
    ("event", "/v1/events/<object_id>"),
):
    bp.get(_rule)(api_view()(_getter(_kind)))


@bp.get("/v1/events")
@api_view()
def list_events(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    return emu.list_events(params), []


@bp.post("/v1/refunds")
@api_view(idempotent=True)
def create_refund(emu: Emulator, params: Obj, info: RequestInfo) -> tuple[Obj, list[Obj]]:
    refund, events = emu.refund(params, info)
    return emu.render(refund, _expand_paths(params)), events


def _session_page(emu: Emulator, session_id: str) -> tuple[Obj, list[Obj]] | None:
    with emu.lock:
        events = emu.expire_due()
        session = emu.sessions.get(session_id)
        snapshot = (copy.deepcopy(session), list(emu.line_items[session_id])) if session else None
    emu.deliver(events)
    return snapshot


def _render_pay(session_id: str, error: str | None = None, status: int = 200) -> Response:
    snapshot = _session_page(_emulator(), session_id)
    if snapshot is None:
        return Response(render_template("closed.html", session=None), 404)
    session, items = snapshot
    template = "pay.html" if session["status"] == "open" else "closed.html"
    code = status if session["status"] == "open" else 410
    html = render_template(
        template,
        session=session,
        items=items,
        error=error,
        form=request.form,
        cards=CARDS.values(),
    )
    return Response(html, code)


@bp.get("/pay/<session_id>")
def pay_page(session_id: str) -> Response:
    """Show the simulated hosted Checkout page."""
    return _render_pay(session_id)


@bp.post("/pay/<session_id>")
def pay_submit(session_id: str) -> Response:
    """Take a test card: pay, decline or reject, and deliver the resulting webhooks."""
    emu = _emulator()
    with emu.lock:
        try:
            outcome = emu.pay(session_id, request.form)
        except ApiError:
            outcome = None
    if outcome is None:
        return _render_pay(session_id)
    return _finish_pay(session_id, outcome)


def _finish_pay(session_id: str, outcome: PayOutcome) -> Response:
    """Deliver an outcome's events, then redirect (paid, 3-D Secure) or show the pay page again."""
    emu = _emulator()
    if outcome.kind == "paid":
        emu.deliver(outcome.events, duplicate=True)
        return redirect(outcome.redirect_url or "/", 303)
    emu.deliver(outcome.events)
    if outcome.kind == "authenticate":
        return redirect(outcome.redirect_url or "/", 303)
    return _render_pay(session_id, outcome.error, 402 if outcome.kind == "declined" else 400)


@bp.get("/pay/<session_id>/authenticate")
def authenticate_page(session_id: str) -> Response:
    """The simulated 3-D Secure challenge (the bank's page Stripe shows in a frame)."""
    emu = _emulator()
    with emu.lock:
        pi = copy.deepcopy(emu.pending_challenge(session_id))
    if pi is None:
        return redirect(f"/pay/{session_id}", 303)
    return Response(render_template("authenticate.html", session_id=session_id, pi=pi))


@bp.post("/pay/<session_id>/authenticate")
def authenticate_submit(session_id: str) -> Response:
    """Complete or fail the challenge; the same events and pages as Stripe afterwards."""
    emu = _emulator()
    with emu.lock:
        outcome = emu.authenticate(session_id, request.form.get("action") == "complete")
    return _finish_pay(session_id, outcome)


@bp.get("/receipts/<charge_id>")
def receipt(charge_id: str) -> Response:
    """Show a receipt for a charge, like Stripe's receipt_url."""
    emu = _emulator()
    with emu.lock:
        charge = copy.deepcopy(emu.charges.get(charge_id))
        refunds = [copy.deepcopy(r) for r in emu.refunds.values() if r["charge"] == charge_id]
    if charge is None or charge["status"] != "succeeded":
        return Response(render_template("closed.html", session=None), 404)
    paid_at = dt.datetime.fromtimestamp(charge["created"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Response(
        render_template("receipt.html", charge=charge, refunds=refunds, paid_at=paid_at)
    )


@bp.get("/")
def index() -> Response:
    """Say what this server is (scripts/run only checks that the port answers)."""
    emu = _emulator()
    with emu.lock:
        counts = {"sessions": len(emu.sessions), "events": len(emu.events)}
    return Response(
        json.dumps({"emulator": "tokenbill checkout emulator", "livemode": False, **counts}),
        mimetype="application/json",
    )


def create_app(emulator: Emulator) -> Flask:
    """Build the emulator's Flask app around an Emulator (separate from webapp)."""
    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.extensions["checkout_emulator"] = emulator
    app.jinja_env.filters["money"] = lambda amount, currency: format_amount(amount, currency)
    app.register_blueprint(bp)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if request.path.startswith("/v1/"):
            error = ApiError(
                exc.code or 500,
                f"Unrecognized request URL ({request.method}: {request.path}).",
            )
            return _json(error.status, error.body(), new_id("req", 14))
        return exc.get_response()

    return app


class EmulatorServer:
    """Run the emulator on a background thread, e.g. in tests: ``with EmulatorServer(...) as s``."""

    def __init__(self, config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = Emulator(config)
        self.app = create_app(self.emulator)
        self.server: BaseWSGIServer = make_server(host, port, self.app, threaded=True)
        self.url = f"http://{host}:{self.server.server_port}"
        if not config.public_url:
            config.public_url = self.url
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> EmulatorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _price_arg(text: str) -> tuple[str, Obj]:
    """Parse ``price_x=500:usd:100 tokens`` (a --price option)."""
    match = re.fullmatch(r"(price_\w+)=(\d+):([a-zA-Z]{3}):(.+)", text)
    if not match:
        raise argparse.ArgumentTypeError("expected price_ID=AMOUNT:CURRENCY:NAME")
    price_id, amount, currency, name = match.groups()
    return price_id, {"unit_amount": int(amount), "currency": currency.lower(), "name": name}


def _enabled_events_arg(text: str) -> frozenset[str] | None:
    """Parse ``--enabled-events``: ``*`` (every type) or ``a.b,c.d``."""
    if text.strip() == "*":
        return None
    types = frozenset(t.strip() for t in text.split(",") if t.strip())
    if not types:
        raise argparse.ArgumentTypeError("expected '*' or comma-separated event types")
    return types


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser (docker-compose.yml and scripts/run pass these flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in docker)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--webhook-url",
        default=DEFAULT_WEBHOOK_URL,
        help="where events are POSTed; an empty string disables delivery",
    )
    parser.add_argument(
        "--public-url", help="base URL browsers use for pay and receipt pages (default: own URL)"
    )
    parser.add_argument("--webhook-attempts", type=int, default=4)
    parser.add_argument(
        "--enabled-events",
        type=_enabled_events_arg,
        default=DEFAULT_ENABLED_EVENTS,
        help="comma-separated event types to deliver, or '*' for all "
        "(default: the ones docs/stripe.md selects)",
    )
    parser.add_argument(
        "--price", type=_price_arg, action="append", default=[], help="price_ID=AMOUNT:CUR:NAME"
    )
    parser.add_argument("--seed", type=int, help="seed the event order shuffle")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
    if not secret:
        secret = DEFAULT_WEBHOOK_SECRET
        log.warning(
            "STRIPE_WEBHOOK_SECRET is not set: signing webhooks with the documented default"
        )
    # A wildcard bind address is no URL a browser can open: pages then say 127.0.0.1.
    own_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    config = EmulatorConfig(
        public_url=(args.public_url or f"http://{own_host}:{args.port}").rstrip("/"),
        webhook_url=args.webhook_url or None,
        webhook_secret=secret,
        webhook_attempts=args.webhook_attempts,
        enabled_events=args.enabled_events,
        prices=dict(args.price),
        seed=args.seed,
    )
    emulator = Emulator(config)
    server = make_server(args.host, args.port, create_app(emulator), threaded=True)
    log.info(
        "checkout emulator on http://%s:%d (pages at %s), webhooks to %s",
        args.host,
        server.server_port,
        config.public_url,
        config.webhook_url or "(disabled)",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

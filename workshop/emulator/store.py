"""In-memory Stripe state: the objects, their lookup, rendering and list pages."""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from workshop.emulator.cards import Card
from workshop.emulator.config import (
    _EXPANDABLE,
    Delivery,
    EmulatorConfig,
)
from workshop.emulator.wire import (
    Obj,
    _as_int,
    _invalid,
    _not_found,
)


class Store:
    """In-memory Stripe objects, looked up and rendered (with ``expand``) like the API does.

    Callers hold ``lock`` around every method except ``deliver``."""

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
        self.customers: dict[str, Obj] = {}
        self.payment_methods: dict[str, Obj] = {}
        # saved PaymentMethod id -> the card behind it (email, card, expiry), for off-session
        self.saved_cards: dict[str, tuple[str, Card, tuple[int, int]]] = {}
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
            ("cus_", "customer", self.customers),
            ("pm_", "payment_method", self.payment_methods),
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

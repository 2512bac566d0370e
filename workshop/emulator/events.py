"""Events: created for every change, listed like /v1/events, delivered as signed webhooks."""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request

from webapp.signing import signature_header
from workshop.emulator.config import (
    Delivery,
    RequestInfo,
)
from workshop.emulator.store import Store
from workshop.emulator.wire import (
    API_VERSION,
    Obj,
    log,
    new_id,
)


class Events(Store):
    """Creates events and delivers the enabled ones to the webhook URL, retrying."""

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
            header = signature_header(body.encode("utf-8"), self.config.webhook_secret)
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

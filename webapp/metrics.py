"""Prometheus metrics at ``/metrics`` (admins, or ``Authorization: Bearer $METRICS_TOKEN``).

Two sources, one page:
- in-process counters and latency histograms from ``prometheus_client`` (aggregated across
  gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set, as scripts/run does);
- business totals counted by ``api.billing_metrics()`` in PostgreSQL at scrape time, exact
  across workers and restarts (events by type and outcome, grants, duplicates prevented,
  clawbacks, consumptions, releases, checkout sessions created vs paid, revenue).
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, abort, current_app, g, request
from flask_login import current_user
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .db import Database, get_db

bp = Blueprint("metrics", __name__)

HTTP_REQUESTS = Counter(
    "tokenbill_http_requests_total",
    "HTTP responses by endpoint, method and status (402 on agent = refused for tokens).",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "tokenbill_http_request_duration_seconds",
    "Time to produce a response, by endpoint.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_DELIVERIES = Counter(
    "tokenbill_webhook_deliveries_total",
    "Stripe webhook deliveries by event type and result "
    "(processed, ignored, rejected, duplicate, bad_request, error).",
    ["type", "result"],
)
AGENT_REQUESTS = Counter(
    "tokenbill_agent_requests_total",
    "Agent requests by result (served, partial, insufficient_tokens, replayed, key_reused,"
    " released, expired);"
    " rate-limited calls are tokenbill_http_requests_total{endpoint=agent.api_agent,status=429}.",
    ["result"],
)
CHECKOUT_SESSIONS_CREATED = Counter(
    "tokenbill_checkout_sessions_created_total", "Checkout Sessions created by this app."
)

HELP = {
    "tokenbill_stripe_events_total": "Stripe events stored in the inbox, by type and outcome.",
    "tokenbill_duplicate_grants_prevented_total": "Events for a payment already granted.",
    "tokenbill_payments": "Payments (PaymentIntents) now in each grant status.",
    "tokenbill_ledger_entries_total": "Ledger rows by kind (purchase, consumption, ...).",
    "tokenbill_ledger_tokens_total": "Tokens moved by ledger kind (absolute).",
    "tokenbill_checkout_sessions_total": "Checkout Sessions by status and payment status.",
    "tokenbill_net_revenue_cents": "Revenue of granted payments net of refunds, by currency.",
    "tokenbill_low_balance_alerts_total": "Low-balance alerts recorded.",
}


class DatabaseCollector(Collector):
    """Renders ``api.billing_metrics()`` rows: ``*_total`` names as counters, others as gauges."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        label_names: dict[str, list[str]] = {}
        for row in self.database.fetch_all("select * from api.billing_metrics()"):
            name, labels = row["metric"], row["labels"] or {}
            if name not in families:
                label_names[name] = sorted(labels)
                kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
                families[name] = kind(name, HELP.get(name, name), labels=label_names[name])
            families[name].add_metric(
                [str(labels.get(k, "")) for k in label_names[name]], float(row["value"] or 0)
            )
        yield from families.values()


def _process_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _authorised() -> bool:
    token = current_app.config.get("METRICS_TOKEN") or ""
    header = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    return bool(current_user.is_authenticated and current_user.is_admin)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of process and business metrics."""
    if not _authorised():
        abort(401 if not current_user.is_authenticated else 403)
    business = CollectorRegistry(auto_describe=False)
    business.register(DatabaseCollector(get_db()))
    body = generate_latest(_process_registry()) + generate_latest(business)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Time every request and count its status by endpoint."""

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        endpoint = request.endpoint or "unmatched"
        HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            HTTP_LATENCY.labels(endpoint).observe(time.perf_counter() - started)
        return response


def record_webhook(event_type: str, result: str) -> None:
    WEBHOOK_DELIVERIES.labels(event_type or "unknown", result).inc()


def record_agent(result: str, count: int = 1) -> None:
    AGENT_REQUESTS.labels(result).inc(count)

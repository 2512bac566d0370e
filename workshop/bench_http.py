"""HTTP benchmarks through the production server (gunicorn): webhooks and the agent endpoint.

1. Signed ``checkout.session.completed`` deliveries per second: every delivery is a distinct
   payment whose session was recorded first, so each one is a real grant (inbox row, payment
   row, ledger row), sent from C concurrent keep-alive clients, and the same deliveries to
   the bench-only control ``/bench/webhook-verify-only`` (the webhook's own signature check,
   no database), in alternating rounds so that drift in a shared machine's load hits both,
   after uncounted deliveries of each from as many sessions as the server has threads (every
   worker's pool connections opened, plpgsql caches filled).
2. Agent-endpoint latency with the offline agent: the real ``POST /api/agent`` with an API key
   (billing on: begin/charge, history lookup, finish) against the bench-only control route
   ``/bench/agent-unbilled`` (same auth, limiter, agent and JSON; no billing) and the control
   ``/bench/agent-round-trips`` (the unbilled route plus two empty ``select 1`` where billing
   reserves and settles), in rounds whose order alternates, from one client. Billed minus
   unbilled is what billing costs per request; the round-trip control splits it into the two
   round trips billing cannot do without and the work the database does inside them.
3. The same database calls straight from the pool (no HTTP), back to back and after 2 ms
   idle (about what the model's answer leaves between begin and settle): on a virtual
   machine whose idle CPUs halt, a call that finds the backend asleep pays its wake-up and
   runs on cold caches, which a back-to-back loop (and pgbench) never sees.

gunicorn serves ``workshop.bench_app:create_bench_app()`` on a free port, against a fresh
database created and migrated by workshop.bench_common (dropped afterwards). Numbers only: it
never asserts on timing.

CLI::

    python -m workshop.bench_http [--quick] [--database-url URL]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import requests

from webapp.api_auth import new_api_key
from webapp.db import APP_ROLE, Database
from workshop import procs, stripe_fixtures
from workshop.bench_app import ROUND_TRIPS_PATH, UNBILLED_PATH, VERIFY_ONLY_PATH
from workshop.bench_common import (
    Sample,
    bench_database,
    connect_owner,
    create_admin,
    create_funded_users,
    format_table,
    ledger_audit,
    percentile,
    progress,
    resolve_admin_url,
)

WEBHOOK_SECRET = "whsec_bench_http_" + "0" * 8  # a private server: not a real secret
APP_SPEC = "workshop.bench_app:create_bench_app()"
WORKERS, THREADS = 2, 8  # what scripts/run starts
WEBHOOK_ROUNDS = 6  # alternating grant/control rounds per client count
WARM_UP_PER_CLIENT = 3  # uncounted grants per client before each client count's rounds
WEBHOOK_HEADERS = [
    "scenario",
    "clients",
    "deliveries",
    "errors",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
]
AGENT_HEADERS = ["route", "requests", "errors", "p50 ms", "p99 ms", "mean ms"]
OVERHEAD_HEADERS = ["billing overhead", "p50", "p99", "mean"]
IDLE_HEADERS = ["call (from the pool, one client)", "back to back p50 ms", "after idle p50 ms",
                "after idle / back to back"]  # fmt: skip
IDLE_GAP_SECONDS = 0.002


@dataclass
class Settings:
    webhooks: int
    clients: list[int]
    rounds: int
    per_round: int


QUICK = Settings(webhooks=300, clients=[1, 4, 8], rounds=4, per_round=100)
FULL = Settings(webhooks=2000, clients=[1, 4, 8, 16], rounds=6, per_round=300)


# ============================================================================================
# Webhooks
# ============================================================================================
def _webhook_bodies(owner: psycopg.Connection[Any], count: int) -> list[bytes]:
    """One paid checkout.session.completed per new buyer, its session recorded beforehand."""
    code, amount = owner.execute(
        "select code, amount_cents from api.packages order by amount_cents limit 1"
    ).fetchone() or ("tokens_100", 500)
    buyers = create_funded_users(owner, uuid.UUID(int=0), count, 0, "http-buyer")
    bodies = []
    for user_id in buyers:
        cs = stripe_fixtures.new_id("cs")
        owner.execute(
            "select api.record_checkout_session(%s, %s, %s, %s)",
            [cs, user_id, code, f"https://checkout.stripe.test/{cs}"],
        )
        evt = stripe_fixtures.checkout_session_completed(user_id, code, amount, cs=cs)
        bodies.append(stripe_fixtures.encode(evt))
    return bodies


def _post_webhooks(
    url: str, bodies: Sequence[bytes], clients: int, path: str = "/api/webhook/stripe"
) -> Sample:
    """Send every body once, split over ``clients`` keep-alive sessions started together."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(index: int) -> None:
        with requests.Session() as session:
            session.get(f"{url}/healthz", timeout=10)  # open the connection before the clock
            barrier.wait()
            for body in bodies[index::clients]:
                headers = {
                    "Content-Type": "application/json",
                    "Stripe-Signature": stripe_fixtures.sign(body, WEBHOOK_SECRET),
                }
                t0 = time.perf_counter()
                response = session.post(f"{url}{path}", data=body, headers=headers, timeout=60)
                latencies[index].append((time.perf_counter() - t0) * 1000.0)
                expected = "processed" if path == "/api/webhook/stripe" else "verified"
                if response.status_code != 200 or response.json().get("outcome") != expected:
                    errors[index] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return Sample(
        seconds=time.perf_counter() - started,
        latencies_ms=[x for per in latencies for x in per],
        failures=sum(errors),
    )


def warm_up_sessions(clients: int) -> int:
    """Client sessions of the uncounted warm-up before ``clients`` clients' rounds."""
    return max(clients, WORKERS * THREADS)


def bench_webhooks(url: str, owner: psycopg.Connection[Any], settings: Settings) -> list[list[Any]]:
    """Per client count: the grants and the same deliveries to the signature-only control, in
    alternating rounds (grant, control, control, grant, ...) so that a machine getting busier
    or quieter during the run weighs on both alike, as in the agent benchmark."""
    rows = []
    routes = {
        "checkout.session.completed (grant)": "/api/webhook/stripe",
        f"control: {VERIFY_ONLY_PATH} (signature only)": VERIFY_ONLY_PATH,
    }
    for clients in settings.clients:
        # Warm up, uncounted (like the agent benchmark): the pools open their connections and
        # each new backend compiles the plpgsql functions once. Every round opens new client
        # connections, and the kernel hands each to either gunicorn worker: warmed from as
        # many sessions as the server has threads, every worker's pool holds what this
        # concurrency needs before the clock starts (a first grant on a new database
        # connection takes 6-10 ms, which is the pool growing, not the grant).
        warm_clients = warm_up_sessions(clients)
        warm_up = _webhook_bodies(owner, WARM_UP_PER_CLIENT * warm_clients)
        for path in routes.values():
            _post_webhooks(url, warm_up, warm_clients, path)
        bodies = _webhook_bodies(owner, settings.webhooks)
        progress(f"webhooks: {len(bodies)} deliveries from {clients} client(s)")
        rounds = max(1, min(WEBHOOK_ROUNDS, len(bodies)))
        merged = {name: Sample(seconds=0.0) for name in routes}
        for r in range(rounds):
            chunk = bodies[r * len(bodies) // rounds : (r + 1) * len(bodies) // rounds]
            order = list(routes.items()) if r % 2 == 0 else list(routes.items())[::-1]
            for name, path in order:
                sample = _post_webhooks(url, chunk, clients, path)
                merged[name].seconds += sample.seconds
                merged[name].latencies_ms += sample.latencies_ms
                merged[name].failures += sample.failures
        for name, sample in merged.items():
            rows.append(
                [
                    name,
                    clients,
                    sample.ops,
                    sample.failures,
                    sample.ops_per_s,
                    sample.p(50),
                    sample.p(99),
                ]
            )
        grant, control = rows[-2], rows[-1]
        rows.append(["grant / control", clients, "", "", grant[4] / control[4], "", ""])
    return rows


# ============================================================================================
# Agent endpoint: billed vs. unbilled
# ============================================================================================
def _agent_client(owner: psycopg.Connection[Any], requests_needed: int) -> str:
    """A funded account with an API key; returns the key's secret."""
    admin_id = create_admin(owner)
    (user_id,) = create_funded_users(owner, admin_id, 1, requests_needed, "http-agent")
    secret, prefix, key_hash = new_api_key()
    owner.execute("select api.create_api_key(%s, 'bench', %s, %s)", [user_id, prefix, key_hash])
    return secret


def _agent_round(session: requests.Session, url: str, path: str, secret: str, n: int) -> Sample:
    latencies, failures = [], 0
    started = time.perf_counter()
    for _ in range(n):
        key = uuid.uuid4().hex
        t0 = time.perf_counter()
        response = session.post(
            f"{url}{path}",
            json={"message": "How many tokens does this request cost?"},
            headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
            timeout=60,
        )
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if response.status_code != 200 or not response.json().get("reply"):
            failures += 1
    return Sample(seconds=time.perf_counter() - started, latencies_ms=latencies, failures=failures)


BILLED = "billed: POST /api/agent"
UNBILLED = f"control: POST {UNBILLED_PATH}"
ROUND_TRIPS = f"control: POST {ROUND_TRIPS_PATH} (two empty round trips)"
AGENT_ROUTES = {BILLED: "/api/agent", UNBILLED: UNBILLED_PATH, ROUND_TRIPS: ROUND_TRIPS_PATH}
OVERHEAD_ROWS = [
    # (row, minuend, subtrahend): differences of the routes' p50, p99 and mean
    ("difference (ms)", BILLED, UNBILLED),
    ("of which two empty round trips (ms)", ROUND_TRIPS, UNBILLED),
    ("of which the database's work in them (ms)", BILLED, ROUND_TRIPS),
]


def bench_agent(
    url: str, owner: psycopg.Connection[Any], settings: Settings
) -> tuple[list[list[Any]], list[list[Any]]]:
    """Every route each round, the order reversed every other round, so drift hits all alike."""
    secret = _agent_client(owner, settings.rounds * settings.per_round + 20)
    merged = {name: Sample(seconds=0.0) for name in AGENT_ROUTES}
    with requests.Session() as session:
        for path in AGENT_ROUTES.values():  # warm up: connection, agent, plans
            _agent_round(session, url, path, secret, 5)
        for r in range(settings.rounds):
            order = list(AGENT_ROUTES.items())
            for name, path in order if r % 2 == 0 else order[::-1]:
                progress(f"agent round {r + 1}/{settings.rounds}: {path}")
                sample = _agent_round(session, url, path, secret, settings.per_round)
                merged[name].seconds += sample.seconds
                merged[name].latencies_ms += sample.latencies_ms
                merged[name].failures += sample.failures
    figures = {
        name: [s.p(50), s.p(99), sum(s.latencies_ms) / max(1, s.ops)] for name, s in merged.items()
    }
    rows = [[name, s.ops, s.failures, *figures[name]] for name, s in merged.items()]
    overhead = [
        [label, *(a - b for a, b in zip(figures[minuend], figures[subtrahend], strict=True))]
        for label, minuend, subtrahend in OVERHEAD_ROWS
    ]
    overhead.append(
        [
            "ratio (billed / control)",
            *(a / b for a, b in zip(figures[BILLED], figures[UNBILLED], strict=True)),
        ]
    )
    return rows, overhead


def bench_idle(db_url: str, owner: psycopg.Connection[Any], settings: Settings) -> list[list[Any]]:
    """begin, settle and ``select 1`` from a pool like the app's, back to back and after
    IDLE_GAP_SECONDS of sleep before each, in rounds whose order alternates."""
    admin_id = create_admin(owner)
    (user_id,) = create_funded_users(owner, admin_id, 1, 10**9, "idle")  # never runs dry
    calls = {
        "select 1": lambda request_id: ("select 1", []),
        "api.begin_agent_request": lambda request_id: (
            "select * from api.begin_agent_request(%s, %s, %s, %s, %s, %s, %s)",
            [user_id, request_id, None, "How many tokens does this request cost?", "*",
             "bench-request-hash", 300],
        ),
        "api.settle_agent_request": lambda request_id: (
            "select * from api.settle_agent_request(%s, %s, %s, %s, %s, %s, %s)",
            [user_id, request_id, "done", "One token.", 40, "", 1],
        ),
    }  # fmt: skip
    timings: dict[tuple[str, float], list[float]] = {}
    db = Database(db_url, APP_ROLE, 1)
    db.open()
    try:
        db.pool.wait()
        gaps = [0.0, IDLE_GAP_SECONDS]
        for r in range(-1, settings.rounds):  # round -1 warms up, uncounted
            progress(f"idle round {r + 1}/{settings.rounds}")
            for gap in gaps if r % 2 == 0 else gaps[::-1]:
                for _ in range(settings.per_round):
                    request_id = uuid.uuid4().hex
                    for name, make in calls.items():
                        time.sleep(gap)
                        t0 = time.perf_counter()
                        db.call(*make(request_id))
                        if r >= 0:
                            timings.setdefault((name, gap), []).append(
                                (time.perf_counter() - t0) * 1000.0
                            )
    finally:
        db.close()
    rows = []
    for name in calls:
        hot, idle = (percentile(timings[(name, gap)], 50) for gap in gaps)
        rows.append([name, hot, idle, idle / hot])
    return rows


# ============================================================================================
# Main
# ============================================================================================
def run(admin_url: str, settings: Settings) -> str:
    """Run both benchmarks on a fresh database and return the report (Markdown tables)."""
    log_dir = Path(tempfile.mkdtemp(prefix="tokenbill-bench-http-"))
    metrics_dir = log_dir / "prometheus"
    metrics_dir.mkdir()
    try:
        with bench_database(admin_url, f"tokenbill_bench_http_{uuid.uuid4().hex[:8]}") as db:
            env = {
                "DATABASE_URL": db,
                "WEBHOOK_DATABASE_URL": db,
                "AUTH_DATABASE_URL": db,
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "SECRET_KEY": secrets.token_urlsafe(32),
                "AGENT_RATE_LIMIT": "1000000 per minute",
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            }
            with (
                connect_owner(db) as owner,
                procs.gunicorn(
                    APP_SPEC, env, log_dir / "gunicorn.log", workers=WORKERS, threads=THREADS
                ) as server,
            ):
                webhook_rows = bench_webhooks(server.url, owner, settings)
                agent_rows, overhead = bench_agent(server.url, owner, settings)
                idle_rows = bench_idle(db, owner, settings)
                grants = owner.execute(
                    "select count(*) from tokenbill.payments where status = 'granted'"
                ).fetchone()
                audit, _ = ledger_audit(owner)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    expected = sum(
        settings.webhooks + WARM_UP_PER_CLIENT * warm_up_sessions(c) for c in settings.clients
    )
    return "\n".join(
        [
            f"gunicorn: {WORKERS} workers x {THREADS} threads, offline agent",
            "",
            "### Webhook deliveries",
            "",
            format_table(WEBHOOK_HEADERS, webhook_rows),
            "",
            "### Agent endpoint latency (one client, alternating rounds)",
            "",
            format_table(AGENT_HEADERS, agent_rows),
            "",
            format_table(OVERHEAD_HEADERS, overhead),
            "",
            f"### Database calls back to back and after {IDLE_GAP_SECONDS * 1000:g} ms idle",
            "",
            format_table(IDLE_HEADERS, idle_rows),
            "",
            f"checked: {grants[0] if grants else 0} of {expected} payments granted;"
            f" ledger audit {'empty' if not audit else f'{len(audit)} problem(s)'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workshop.bench_http",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", help="superuser URL (default: DATABASE_ADMIN_URL)")
    parser.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    parser.add_argument("--webhooks", type=int, help="deliveries per client count")
    parser.add_argument("--clients", help="comma-separated client counts, e.g. 1,4,8")
    parser.add_argument("--rounds", type=int, help="A/B rounds of the agent benchmark")
    parser.add_argument("--per-round", type=int, help="requests per route per round")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = Settings(
        webhooks=args.webhooks or base.webhooks,
        clients=[int(c) for c in args.clients.split(",")] if args.clients else base.clients,
        rounds=args.rounds or base.rounds,
        per_round=args.per_round or base.per_round,
    )
    print(run(resolve_admin_url(args.database_url), settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

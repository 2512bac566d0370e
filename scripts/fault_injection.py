"""Fault injection: pay and consume through the real server while PostgreSQL and workers die.

Why: the billing promises (a payment grants once, an agent request is paid once or refunded)
rest on transactions, idempotency keys and retries. This run breaks the infrastructure under
real traffic and then checks the promises against the ledger:

* a private PostgreSQL cluster (free port, temp dir) and gunicorn (``webapp:create_app()``,
  2 workers) that this script owns, restarts and kills, then removes;
* a driver that behaves like Stripe: for every payment, signed ``checkout.session.completed``
  and ``payment_intent.succeeded`` (same PaymentIntent), random duplicate deliveries, spread
  over the run from several threads, each retried with exponential backoff until 2xx;
* agent consumers with API keys calling ``POST /api/agent`` (half of the requests streamed)
  with one Idempotency-Key per logical request, retried with the same key (and body) until a
  definitive answer;
* a chaos thread doing ``pg_ctl restart -m fast|immediate`` and ``kill -9`` of workers.

Requests orphaned by a killed worker keep their hold (tokens reserved) until it expires
(AGENT_HOLD_SECONDS, short here); once chaos has stopped and no client has a request in flight,
the run waits for the last hold's expiry, calls ``api.expire_agent_holds`` as an operator's
sweep would, and finishes the retries. Expired holds are settled by the written rule: charged
when the dead worker had recorded a streamed part as delivered, released otherwise.

CLI::

    python -m scripts.fault_injection [--payments 200] [--consumers 8] [--duration 30]
                                      [--pg-restarts 4] [--worker-kills 4] [--seed N]

Exits 1 when any invariant is violated (the violations are printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from scripts import procs, stripe_fixtures
from scripts.bench_common import (
    bench_database,
    connect_owner,
    create_admin,
    create_funded_users,
    format_table,
    progress,
)
from webapp.api_auth import new_api_key

WEBHOOK_SECRET = "whsec_fault_injection_" + "0" * 8  # a private server: the secret is not one
AGENT_TIMEOUT_SECONDS = 2
AGENT_HOLD_SECONDS = AGENT_TIMEOUT_SECONDS + 5  # the shortest the app allows: soon after chaos
CLIENT_TIMEOUT = (5.0, 60.0)  # longer than any server-side wait, so we never abandon a request
MAX_ATTEMPTS = 16  # Stripe retries for days; a bounded number keeps a broken run finite
BACKOFF_START = 0.05
BACKOFF_MAX = 2.0
PENDING_RETRIES = 2  # 409 "in progress" this often means the attempt's worker died
DEFINITIVE_AGENT = {200, 402, 502, 504}


@dataclass
class Config:
    """One run's shape; ``seed`` fixes the traffic and the fault schedule."""

    payments: int = 200
    consumers: int = 8
    duration: float = 30.0
    pg_restarts: int = 4
    worker_kills: int = 4
    seed: int | None = None
    senders: int = 4
    duplicate_rate: float = 0.3
    agent_tokens: int | None = None  # default: about 12 requests/s per consumer
    workers: int = 2
    threads: int = 4
    keep_logs: bool = False


@dataclass
class Result:
    """What happened and whether every invariant held."""

    ok: bool
    violations: list[str]
    seed: int
    counts: dict[str, int]
    duration_s: float
    log_dir: str | None = None

    def table(self) -> str:
        rows = [[name, value] for name, value in self.counts.items()]
        rows.append(["duration (s)", round(self.duration_s, 1)])
        return format_table(["measure", "value"], rows)


class Stats:
    """Thread-safe counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def violation(self, message: str) -> None:
        with self._lock:
            self.violations.append(message)


def _backoff(delay: float, rng: random.Random) -> float:
    """Sleep ``delay`` with jitter and return the next, doubled delay (capped)."""
    time.sleep(delay * (0.5 + rng.random()))
    return min(delay * 2, BACKOFF_MAX)


# ============================================================================================
# Stripe's side
# ============================================================================================
@dataclass
class Payment:
    user_id: uuid.UUID
    package: str
    tokens: int
    payment_intent: str


@dataclass(order=True)
class Delivery:
    due: float
    body: bytes = field(compare=False)
    event_id: str = field(compare=False)


def _plan_faults(cfg: Config, rng: random.Random) -> list[tuple[float, str]]:
    """When to restart PostgreSQL and kill a worker, in the run's first 85%.

    Kinds: "fast" and "immediate" (pg_ctl restart modes, alternating so that a run with two
    restarts has one of each) and "kill" (kill -9 of a random worker).
    """
    modes = ["fast", "immediate"]
    rng.shuffle(modes)
    restarts = [modes[i % 2] for i in range(cfg.pg_restarts)]
    kinds = restarts + ["kill"] * cfg.worker_kills
    return sorted((rng.uniform(0.05, 0.85) * cfg.duration, kind) for kind in kinds)


def _due(cfg: Config, rng: random.Random, fault_times: list[float]) -> float:
    """A delivery time: half at random, half just around a fault, so short runs still hit them."""
    if fault_times and rng.random() < 0.5:
        return max(0.0, rng.choice(fault_times) + rng.uniform(-0.2, 0.6))
    return rng.uniform(0, cfg.duration)


def _plan_payments(
    owner: psycopg.Connection[Any], cfg: Config, rng: random.Random, fault_times: list[float]
) -> tuple[list[Payment], list[Delivery]]:
    """Register buyers, record their Checkout Sessions, and schedule every delivery."""
    packages = owner.execute("select code, tokens, amount_cents from api.packages").fetchall()
    buyers = create_funded_users(owner, uuid.UUID(int=0), cfg.payments, 0, "fault-buyer")
    payments, deliveries = [], []
    for user_id in buyers:
        code, tokens, amount = rng.choice(packages)
        pi, cs = stripe_fixtures.new_id("pi"), stripe_fixtures.new_id("cs")
        # what the app records before redirecting the buyer to Stripe
        owner.execute(
            "select api.record_checkout_session(%s, %s, %s, %s)",
            [cs, user_id, code, f"https://checkout.stripe.test/{cs}"],
        )
        payments.append(Payment(user_id, code, tokens, pi))
        events = [
            stripe_fixtures.checkout_session_completed(user_id, code, amount, pi=pi, cs=cs),
            stripe_fixtures.payment_intent_succeeded(user_id, code, amount, pi=pi),
        ]
        for evt in events:
            body = stripe_fixtures.encode(evt)
            copies = 1 + (rng.random() < cfg.duplicate_rate)
            for _ in range(copies):
                deliveries.append(Delivery(_due(cfg, rng, fault_times), body, evt["id"]))
    deliveries.sort()
    return payments, deliveries


def _send_until_2xx(
    session: requests.Session, url: str, delivery: Delivery, stats: Stats, rng: random.Random
) -> None:
    """Deliver one event like Stripe: re-signed on every attempt, retried until 2xx."""
    delay = BACKOFF_START
    for attempt in range(1, MAX_ATTEMPTS + 1):
        stats.add("webhook attempts")
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": stripe_fixtures.sign(delivery.body, WEBHOOK_SECRET),
        }
        try:
            status = session.post(url, data=delivery.body, headers=headers, timeout=CLIENT_TIMEOUT)
            code = status.status_code
        except requests.RequestException:
            code = None
            stats.add("webhook connection errors")
        if code is not None and 200 <= code < 300:
            return
        if code is not None:
            stats.add("webhook 5xx" if code >= 500 else f"webhook {code}")
        if attempt < MAX_ATTEMPTS:
            stats.add("webhook retries")
            delay = _backoff(delay, rng)
    stats.violation(f"event {delivery.event_id} never got a 2xx in {MAX_ATTEMPTS} attempts")


@dataclass
class Outbox:
    """Deliveries still to make, in due order, and those already made (for redeliveries)."""

    due: list[Delivery]
    sent: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _sender(base_url: str, outbox: Outbox, started: float, stats: Stats, seed: int) -> None:
    """Take the next due delivery, wait for its time, deliver it; until none are left.

    While waiting, redeliver events already delivered (Stripe does when it missed our 2xx):
    the traffic stays dense, so faults hit webhooks in flight, and duplicates race the faults.
    """
    rng = random.Random(seed)
    url = f"{base_url}/api/webhook/stripe"
    with requests.Session() as session:
        while True:
            with outbox.lock:
                if not outbox.due:
                    return
                delivery = outbox.due.pop(0)
            while time.monotonic() < started + delivery.due:
                with outbox.lock:
                    again = rng.choice(outbox.sent) if outbox.sent else None
                if again is not None:
                    stats.add("webhook redeliveries")
                    _send_until_2xx(session, url, again, stats, rng)
                time.sleep(min(0.02, max(0.0, started + delivery.due - time.monotonic())))
            stats.add("webhook deliveries")
            _send_until_2xx(session, url, delivery, stats, rng)
            with outbox.lock:
                outbox.sent.append(delivery)


# ============================================================================================
# Agent consumers
# ============================================================================================
@dataclass
class Consumer:
    """An API client with a funded account; ``answers`` maps each key to its final answer."""

    user_id: uuid.UUID
    secret: str
    funded: int
    answers: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    streamed: set[str] = field(default_factory=set)
    stuck: list[str] = field(default_factory=list)


def _create_consumers(owner: psycopg.Connection[Any], cfg: Config) -> list[Consumer]:
    """Funded accounts (api.admin_adjust by an admin) with one API key each."""
    admin_id = create_admin(owner)
    tokens = cfg.agent_tokens or max(10, int(cfg.duration * 12))
    users = create_funded_users(owner, admin_id, cfg.consumers, tokens, "fault-agent")
    consumers = []
    for user_id in users:
        secret, prefix, key_hash = new_api_key()  # the app's own format and hashing
        owner.execute(
            "select api.create_api_key(%s, 'fault injection', %s, %s)", [user_id, prefix, key_hash]
        )
        consumers.append(Consumer(user_id, secret, tokens))
    return consumers


def _post_agent(
    session: requests.Session, base_url: str, consumer: Consumer, key: str, stream: bool
) -> tuple[int, str | None]:
    """One attempt; a stream is read to its end line and reduced to (status, reply) like JSON.

    A stream whose end line is a release (cost 0) counts as 502; one that broke off raises
    (requests.RequestException) and is retried like a lost connection."""
    response = session.post(
        f"{base_url}/api/agent",
        json={"message": f"fault injection request {key}", "stream": stream},
        headers={"Authorization": f"Bearer {consumer.secret}", "Idempotency-Key": key},
        timeout=CLIENT_TIMEOUT,
        stream=stream,
    )
    if response.status_code != 200 or not stream:
        body = response.json() if response.status_code == 200 else {}
        return response.status_code, body.get("reply")
    lines = [json.loads(raw) for raw in response.iter_lines() if raw]
    end = lines[-1] if lines else {}
    if end.get("done") or end.get("partial"):
        return 200, "".join(line.get("delta", "") for line in lines)
    if end.get("cost") == 0:
        return 502, None
    raise requests.ConnectionError(f"stream ended without a settlement: {end}")


def _call_agent(
    session: requests.Session,
    base_url: str,
    consumer: Consumer,
    key: str,
    stats: Stats,
    rng: random.Random,
) -> bool:
    """One logical request, retried with the same key; False when it must wait for the sweep."""
    delay = BACKOFF_START
    pending_seen = 0
    stream = key in consumer.streamed
    for _ in range(MAX_ATTEMPTS):
        stats.add("agent attempts")
        try:
            code, reply = _post_agent(session, base_url, consumer, key, stream)
        except (requests.RequestException, ValueError):
            stats.add("agent connection errors")
            delay = _backoff(delay, rng)
            continue
        if code in DEFINITIVE_AGENT:
            consumer.answers[key] = (code, reply)
            return True
        if code == 409:
            stats.add("agent 409 in progress")
            pending_seen += 1
            if pending_seen >= PENDING_RETRIES:
                return False
        elif code >= 500:
            stats.add("agent 5xx")
        else:
            stats.violation(f"agent key {key}: unexpected {code}")
            consumer.answers[key] = (code, None)
            return True
        delay = _backoff(delay, rng)
    return False


def _consume(
    base_url: str, consumer: Consumer, cfg: Config, started: float, stats: Stats, seed: int
) -> None:
    """Issue requests at a pace that spends the funding over the run (and a little more)."""
    rng = random.Random(seed)
    interval = cfg.duration / (consumer.funded * 1.25)
    with requests.Session() as session:
        n = 0
        while time.monotonic() - started < cfg.duration:
            key = f"fi-{consumer.user_id.hex[:8]}-{n}"
            n += 1
            stats.add("agent requests")
            if rng.random() < 0.5:
                consumer.streamed.add(key)
                stats.add("agent requests streamed")
            if not _call_agent(session, base_url, consumer, key, stats, rng):
                consumer.stuck.append(key)
            time.sleep(interval * (0.5 + rng.random()))


# ============================================================================================
# Chaos
# ============================================================================================
def _chaos(
    plan: list[tuple[float, str]],
    pg: procs.PrivatePostgres,
    server: procs.Gunicorn,
    started: float,
    stats: Stats,
    rng: random.Random,
    stop: threading.Event,
) -> None:
    """Restart PostgreSQL (fast or immediate) and kill workers, as planned."""
    for due, kind in plan:
        if stop.wait(max(0.0, started + due - time.monotonic())):
            return
        if kind != "kill":
            progress(f"chaos: pg_ctl restart -m {kind}")
            pg.restart(kind)
            stats.add(f"pg restarts ({kind})")
            continue
        deadline = time.monotonic() + 15
        pids = server.worker_pids()
        while not pids and time.monotonic() < deadline:  # both being respawned right now
            time.sleep(0.1)
            pids = server.worker_pids()
        if pids:
            pid = rng.choice(pids)
            progress(f"chaos: kill -9 worker {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                stats.add("worker kills")


# ============================================================================================
# Verification
# ============================================================================================
def _verify_payments(owner: psycopg.Connection[Any], payments: list[Payment], stats: Stats) -> None:
    expected = {p.payment_intent: p for p in payments}
    rows = owner.execute(
        """
        select p.payment_intent_id, p.status, p.user_id, p.tokens_granted,
               count(l.id) filter (where l.kind = 'purchase') as purchases
          from tokenbill.payments p
          left join tokenbill.ledger l on l.payment_id = p.id
         group by p.id
        """
    ).fetchall()
    granted = 0
    for pi, status, user_id, tokens, purchases in rows:
        payment = expected.get(pi)
        if payment is None:
            stats.violation(f"payment {pi} was never sent")
            continue
        if status != "granted" or purchases != 1 or user_id != payment.user_id:
            stats.violation(f"payment {pi}: status {status}, {purchases} purchase rows")
        elif tokens != payment.tokens:
            stats.violation(f"payment {pi}: granted {tokens} tokens, package has {payment.tokens}")
        else:
            granted += 1
    stats.add("payments granted", granted)
    if granted != len(payments):
        stats.violation(f"{granted} of {len(payments)} payments granted exactly once")
    balances = dict(
        owner.execute(
            "select u.id, u.balance from tokenbill.users u where u.id = any(%s)",
            [[p.user_id for p in payments]],
        ).fetchall()
    )
    for p in payments:
        if balances.get(p.user_id) != p.tokens:
            stats.violation(f"buyer {p.user_id}: balance {balances.get(p.user_id)} != {p.tokens}")
    outcomes = dict(
        owner.execute("select outcome, count(*) from tokenbill.stripe_events group by 1").fetchall()
    )
    if set(outcomes) != {"processed"} or outcomes["processed"] != 2 * len(payments):
        stats.violation(
            f"webhook inbox outcomes {outcomes}, expected {2 * len(payments)} processed"
        )


def _verify_consumer(owner: psycopg.Connection[Any], c: Consumer, stats: Stats) -> None:
    served = {k for k, (code, _) in c.answers.items() if code == 200}
    refused = {k for k, (code, _) in c.answers.items() if code == 402}
    failed = {k for k, (code, _) in c.answers.items() if code in (502, 504)}
    stats.add("agent served", len(served))
    stats.add("agent refused (402)", len(refused))
    stats.add("agent refunded (502/504)", len(failed))
    who = f"consumer {c.user_id}"
    if c.stuck:
        stats.violation(f"{who}: no definitive answer for {c.stuck}")
    holds = {
        k: (status, charged)
        for k, status, charged in owner.execute(
            "select request_id, status, charged from tokenbill.agent_holds where user_id = %s",
            [c.user_id],
        ).fetchall()
    }
    reserved = [
        k
        for (k,) in owner.execute(
            "select request_id from tokenbill.ledger where user_id = %s and kind = 'reserve'",
            [c.user_id],
        ).fetchall()
    ]
    settled = {k for k, (status, _) in holds.items() if status == "settled"}
    released = {k for k, (status, _) in holds.items() if status == "released"}
    held = sorted(k for k, (status, _) in holds.items() if status == "held")
    if len(reserved) != len(set(reserved)):
        stats.violation(f"{who}: a key was reserved twice")
    if set(reserved) != served | failed:
        stats.violation(
            f"{who}: reserved keys differ from answered ones: "
            f"missing {sorted(served | failed - set(reserved))}, "
            f"extra {sorted(set(reserved) - served - failed)}"
        )
    if settled != served:
        stats.violation(f"{who}: charged {sorted(settled ^ served)} do not match 200 answers")
    if released != failed:
        stats.violation(f"{who}: releases {sorted(released ^ failed)} do not match failures")
    if held:
        stats.violation(f"{who}: holds never settled {held}")
    messages = {
        k: (status, content)
        for k, status, content in owner.execute(
            "select request_id, status, content from tokenbill.messages"
            " where user_id = %s and role = 'assistant'",
            [c.user_id],
        ).fetchall()
    }
    for key in served:
        status, content = messages.get(key, ("missing", None))
        if status not in ("done", "partial") or content != c.answers[key][1]:
            stats.violation(f"{who}: key {key} answered 200 but stored {messages.get(key)}")
    for key in failed:
        if messages.get(key, ("missing",))[0] not in ("failed", "timeout"):
            stats.violation(f"{who}: key {key} answered a failure but stored {messages.get(key)}")
    pending = [k for k, (status, _) in messages.items() if status == "pending"]
    if pending:
        stats.violation(f"{who}: requests still pending {pending}")
    charged = sum(charged or 0 for _, charged in holds.values())
    row = owner.execute("select balance from tokenbill.users where id = %s", [c.user_id]).fetchone()
    if row is None or row[0] != c.funded - charged:
        stats.violation(f"{who}: balance {row and row[0]} != funded {c.funded} - charged {charged}")


def _verify(
    owner: psycopg.Connection[Any], payments: list[Payment], consumers: list[Consumer], stats: Stats
) -> None:
    _verify_payments(owner, payments, stats)
    for consumer in consumers:
        _verify_consumer(owner, consumer, stats)
    audit = owner.execute("select * from api.ledger_audit()").fetchall()
    if audit:
        stats.violation(f"api.ledger_audit() found {len(audit)} problem(s): {audit[:5]}")


# ============================================================================================
# The run
# ============================================================================================
def _server_env(database_url: str, log_dir: Path) -> dict[str, str]:
    metrics_dir = log_dir / "prometheus"
    metrics_dir.mkdir(exist_ok=True)
    return {
        "DATABASE_URL": database_url,
        "WEBHOOK_DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "AGENT_RATE_LIMIT": "100000 per minute",
        "AGENT_TIMEOUT_SECONDS": str(AGENT_TIMEOUT_SECONDS),
        "AGENT_HOLD_SECONDS": str(AGENT_HOLD_SECONDS),
        "WEBHOOK_DB_TIMEOUT_SECONDS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }


def _wait_for_hold_expiry(owner: psycopg.Connection[Any]) -> None:
    """Sleep until every hold still held has passed its expires_at."""
    row = owner.execute(
        "select extract(epoch from max(expires_at) - now()) from tokenbill.agent_holds"
        " where status = 'held'"
    ).fetchone()
    if row and row[0] is not None and row[0] > 0:
        time.sleep(float(row[0]) + 0.2)


def _threads(targets: list[tuple[Any, tuple[Any, ...]]], stats: Stats) -> list[threading.Thread]:
    """Start daemon threads; a crash in one is a violation, not a silently shorter run."""

    def guarded(target: Any, args: tuple[Any, ...]) -> None:
        try:
            target(*args)
        except Exception as exc:
            stats.violation(f"{target.__name__} crashed: {type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=guarded, args=(t, a), daemon=True, name=t.__name__)
        for t, a in targets
    ]
    for thread in threads:
        thread.start()
    return threads


def run(cfg: Config) -> Result:
    """Set everything up, inject faults under traffic, check the invariants, clean up.

    The server's log stays in ``Result.log_dir`` when asked for, or when the run failed.
    """
    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
    log_dir = Path(tempfile.mkdtemp(prefix="tokenbill-faults-"))
    keep = True  # until the run finished cleanly
    try:
        result = _run(cfg, seed, log_dir)
        keep = cfg.keep_logs or not result.ok
        result.log_dir = str(log_dir) if keep else None
        return result
    finally:
        if keep:
            progress(f"fault injection: logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def _run(cfg: Config, seed: int, log_dir: Path) -> Result:
    rng = random.Random(seed)
    stats = Stats()
    started_at = time.monotonic()
    stop = threading.Event()
    with (
        procs.private_postgres() as pg,
        bench_database(pg.admin_url, "tokenbill_faults", keep=True) as db_url,
    ):
        progress(f"fault injection: seed {seed}, PostgreSQL on port {pg.port}")
        with connect_owner(db_url) as owner:
            faults = _plan_faults(cfg, rng)
            payments, deliveries = _plan_payments(owner, cfg, rng, [t for t, _ in faults])
            consumers = _create_consumers(owner, cfg)
        with procs.gunicorn(
            "webapp:create_app()",
            _server_env(db_url, log_dir),
            log_dir / "gunicorn.log",
            workers=cfg.workers,
            threads=cfg.threads,
        ) as server:
            try:
                t0 = time.monotonic()
                outbox = Outbox(deliveries)
                clients = _threads(
                    [
                        (_sender, (server.url, outbox, t0, stats, seed + i))
                        for i in range(cfg.senders)
                    ]
                    + [
                        (_consume, (server.url, c, cfg, t0, stats, seed + 1000 + i))
                        for i, c in enumerate(consumers)
                    ],
                    stats,
                )
                chaos_rng = random.Random(seed + 7)
                (chaos,) = _threads(
                    [(_chaos, (faults, pg, server, t0, stats, chaos_rng, stop))], stats
                )
                chaos.join()
                for thread in clients:
                    thread.join()
                # No request is in flight now and no worker runs an agent: any hold still
                # held belongs to a killed worker. Let it expire, then settle it by the rule,
                # as the operator's sweep would.
                with connect_owner(db_url) as owner:  # a new one: PostgreSQL was restarted
                    _wait_for_hold_expiry(owner)
                    swept = owner.execute("select api.expire_agent_holds()").fetchone()
                stats.add("agent requests swept", swept[0] if swept else 0)
                with requests.Session() as session:
                    for c in consumers:
                        stuck, c.stuck = c.stuck, []
                        for key in stuck:
                            if not _call_agent(session, server.url, c, key, stats, rng):
                                c.stuck.append(key)
            finally:
                stop.set()
        with connect_owner(db_url) as owner:
            _verify(owner, payments, consumers, stats)
    return Result(
        ok=not stats.violations,
        violations=stats.violations,
        seed=seed,
        counts=dict(sorted(stats.counts.items())),
        duration_s=time.monotonic() - started_at,
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fault_injection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Config()
    parser.add_argument("--payments", type=int, default=defaults.payments)
    parser.add_argument("--consumers", type=int, default=defaults.consumers)
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument("--pg-restarts", type=int, default=defaults.pg_restarts)
    parser.add_argument("--worker-kills", type=int, default=defaults.worker_kills)
    parser.add_argument("--agent-tokens", type=int, default=defaults.agent_tokens)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = Config(
        payments=args.payments,
        consumers=args.consumers,
        duration=args.duration,
        pg_restarts=args.pg_restarts,
        worker_kills=args.worker_kills,
        agent_tokens=args.agent_tokens,
        seed=args.seed,
        keep_logs=args.keep_logs,
    )
    try:
        result = run(cfg)
    except KeyboardInterrupt:
        print("interrupted: server and cluster stopped", file=sys.stderr)
        return 130
    print(f"fault injection, seed {result.seed}")
    print(result.table())
    if result.log_dir:
        print(f"server log kept in {result.log_dir}")
    if result.ok:
        print("OK: every payment granted once, every agent request settled once, audit empty")
        return 0
    print(f"FAILED: {len(result.violations)} violation(s)")
    for violation in result.violations:
        print(f"  - {violation}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

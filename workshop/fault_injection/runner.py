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

    python -m workshop.fault_injection [--payments 200] [--consumers 8] [--duration 30]
                                      [--pg-restarts 4] [--worker-kills 4] [--seed N]

Exits 1 when any invariant is violated (the violations are printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import requests

from workshop import procs
from workshop.bench_common import (
    bench_database,
    connect_owner,
    progress,
)
from workshop.fault_injection.agents import (
    _call_agent,
    _consume,
    _create_consumers,
)
from workshop.fault_injection.config import (
    AGENT_HOLD_SECONDS,
    AGENT_TIMEOUT_SECONDS,
    WEBHOOK_SECRET,
    Config,
    Result,
    Stats,
)
from workshop.fault_injection.stripe_side import (
    Outbox,
    _plan_faults,
    _plan_payments,
    _sender,
)
from workshop.fault_injection.verify import (
    _verify,
)


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
# The run
# ============================================================================================
def _server_env(database_url: str, log_dir: Path) -> dict[str, str]:
    metrics_dir = log_dir / "prometheus"
    metrics_dir.mkdir(exist_ok=True)
    return {
        "DATABASE_URL": database_url,
        "WEBHOOK_DATABASE_URL": database_url,
        "AUTH_DATABASE_URL": database_url,
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
        "select extract(epoch from max(expires_at) - now()) from api.agent_holds"
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
        prog="python -m workshop.fault_injection",
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

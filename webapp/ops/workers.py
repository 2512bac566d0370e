"""The background loops in one process: ``flask --app webapp workers``.

Three loops keep money moving when no user is asking: queued auto top-ups are charged
(webapp/ops/auto_topup.py), low-balance alerts are posted (webapp/ops/notify_alerts.py), and
agent holds left by a crashed web worker are settled (api.expire_agent_holds). Each loop has
its own thread and each pass its own try: Stripe down or a database restart costs a log line
and a retry with backoff, never the other loops and never the process; a loop thread that dies
anyway is restarted. Claims are FOR UPDATE SKIP LOCKED, so two supervisors never charge or
send one row twice.

``--parent-pid`` ties the process to the app that started it (scripts/run passes its own pid,
which `exec gunicorn` keeps): once that process is gone the supervisor is re-parented and
stops within a tick, so Ctrl-C or a gunicorn exit leaves no orphan. ``--lock FILE`` keeps one
supervisor per checkout; a second one stands by until the first lets go.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click
from flask import current_app
from flask.cli import with_appcontext

from webapp.db import connect_as
from webapp.stripe_gateway import client_from_config

from . import auto_topup, notify_alerts
from .connection import worker_url

log = logging.getLogger("tokenbill.workers")

EXPIRE_ROLE = "tokenbill_sweeper"  # may run api.expire_agent_holds and nothing else (0026)
MAX_BACKOFF = 60.0  # a database that is down for long is retried once a minute
TICK = 0.5  # how often the supervisor checks its loops and its parent


@dataclass(frozen=True)
class Loop:
    """One background job: ``run`` does one pass and returns what is worth a log line."""

    name: str
    interval: float
    run: Callable[[], str | None]


def describe(exc: BaseException) -> str:
    """One line for the log: the error's kind and first line (URLs carry no password here)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def expire_holds(database_url: str) -> int:
    """Settle every agent hold past its expiry; PostgreSQL applies the rule."""
    with connect_as(database_url, EXPIRE_ROLE, autocommit=True) as conn:
        return conn.execute("select api.expire_agent_holds()").fetchone()[0]  # type: ignore[index]


def run_pass(loop: Loop) -> bool:
    """One pass of ``loop`` in its own try; False (logged) when it failed."""
    try:
        summary = loop.run()
    except Exception as exc:
        log.warning("%s: pass failed (%s)", loop.name, describe(exc))
        return False
    if summary:
        log.info("%s: %s", loop.name, summary)
    return True


class Supervisor:
    """Runs each loop in a daemon thread until ``stop`` is set; restarts a thread that died."""

    def __init__(self, loops: list[Loop], max_backoff: float = MAX_BACKOFF) -> None:
        self.loops = loops
        self.max_backoff = max_backoff
        self.stop = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        self.restarts = 0
        self._deaths: dict[str, int] = {}  # per loop, for the restart backoff
        self._not_before: dict[str, float] = {}

    def _forever(self, loop: Loop) -> None:
        failures = 0
        while not self.stop.is_set():
            if run_pass(loop):
                if failures:
                    log.info("%s: working again after %d failed pass(es)", loop.name, failures)
                failures = 0
                delay = loop.interval
            else:
                failures += 1
                delay = min(loop.interval * 2**failures, max(self.max_backoff, loop.interval))
                log.info("%s: retrying in %.1fs", loop.name, delay)
            self.stop.wait(delay)

    def _start(self, loop: Loop) -> None:
        thread = threading.Thread(target=self._forever, args=[loop], name=loop.name, daemon=True)
        self.threads[loop.name] = thread
        thread.start()

    def check(self) -> None:
        """Start loops not running yet and restart those whose thread died, each later than
        the last (1 s, 2 s, ... up to max_backoff), so a loop that always dies is no busy loop."""
        now = time.monotonic()
        for loop in self.loops:
            thread = self.threads.get(loop.name)
            if thread is not None and thread.is_alive():
                continue
            if thread is not None and loop.name not in self._not_before:
                deaths = self._deaths[loop.name] = self._deaths.get(loop.name, 0) + 1
                delay = min(2.0 ** (deaths - 1), self.max_backoff)
                self._not_before[loop.name] = now + delay
                log.error("%s: loop died; restarting it in %.0fs", loop.name, delay)
            if now < self._not_before.get(loop.name, 0.0):
                continue
            if self._not_before.pop(loop.name, None) is not None:
                self.restarts += 1
            self._start(loop)

    def run(self, keep_going: Callable[[], bool] = lambda: True, tick: float = TICK) -> None:
        """Supervise until ``stop`` is set or ``keep_going()`` turns false."""
        while not self.stop.is_set() and keep_going():
            self.check()
            self.stop.wait(tick)
        self.shutdown()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Let the passes in flight finish (a row cut short stays queued and is retried with
        the same idempotency key), then return."""
        self.stop.set()
        for thread in self.threads.values():
            thread.join(timeout)


def build_loops(
    config: Mapping[str, Any], environ: Mapping[str, str], interval: float, expire_interval: float
) -> tuple[list[Loop], list[str]]:
    """The loops these settings allow, and one line per loop left off (and why)."""
    url = worker_url(config)
    loops = [Loop("expire-holds", expire_interval, lambda: _settled(expire_holds(url)))]
    off = []
    refusal = auto_topup.refusal(config)
    if refusal:
        off.append(f"auto-topup off: {refusal}")
    else:
        client = client_from_config(config)
        loops.append(
            Loop(
                "auto-topup", interval, lambda: auto_topup.summary(auto_topup.run_once(url, client))
            )
        )
    alert_url = environ.get("ALERT_WEBHOOK_URL", "")
    secret = environ.get("ALERT_WEBHOOK_SECRET", "")
    if alert_url and secret:
        loops.append(
            Loop(
                "notify-alerts",
                interval,
                lambda: _sent(*notify_alerts.run_once(url, alert_url, secret)),
            )
        )
    else:
        off.append("notify-alerts off: ALERT_WEBHOOK_URL and ALERT_WEBHOOK_SECRET are not set")
    return loops, off


def _settled(count: int) -> str | None:
    return f"settled {count} expired agent request(s)" if count else None


def _sent(sent: int, failed: int) -> str | None:
    return f"alerts sent {sent}, failed {failed}" if sent or failed else None


def take_lock(path: Path) -> TextIO | None:
    """An exclusive lock on ``path`` held while the returned file is open; None if taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _stop_on_sigterm(supervisor: Supervisor) -> None:
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stop.set())


def _wait_for_lock(
    path: Path, supervisor: Supervisor, keep_going: Callable[[], bool]
) -> TextIO | None:
    """The lock on ``path``, once no other supervisor holds it; None if told to stop first."""
    lock = take_lock(path)
    if lock is None:
        log.info("another supervisor holds %s: standing by", path)
    while lock is None and keep_going() and not supervisor.stop.wait(TICK):
        lock = take_lock(path)
    return lock


@click.command("workers")
@click.option("--once", is_flag=True, help="One pass of every loop, then exit (1 if any failed).")
@click.option("--interval", type=float, default=5.0, show_default=True,
              help="Seconds between auto top-up and alert passes.")  # fmt: skip
@click.option("--expire-interval", type=float, default=60.0, show_default=True,
              help="Seconds between sweeps of expired agent holds.")  # fmt: skip
@click.option("--parent-pid", type=int,
              help="The pid of our parent process: stop once it is gone.")  # fmt: skip
@click.option("--lock", "lock_path", type=click.Path(path_type=Path),
              help="Run only while holding this file's lock; stand by until then.")  # fmt: skip
@with_appcontext
def command(
    once: bool,
    interval: float,
    expire_interval: float,
    parent_pid: int | None,
    lock_path: Path | None,
) -> None:
    """Run the background loops (auto top-ups, low-balance alerts, expired agent holds)."""
    config = current_app.config
    if not worker_url(config):
        raise click.UsageError("set WORKER_DATABASE_URL or DATABASE_URL")
    if parent_pid is not None and os.getppid() != parent_pid:
        raise click.UsageError(f"--parent-pid {parent_pid} is not the pid of this one's parent")
    loops, off = build_loops(config, os.environ, interval, expire_interval)
    for line in off:
        log.warning("%s", line)
    if once:
        failed = [loop.name for loop in loops if not run_pass(loop)]
        raise SystemExit(1 if failed else 0)

    def keep_going() -> bool:
        return parent_pid is None or os.getppid() == parent_pid

    supervisor = Supervisor(loops)
    _stop_on_sigterm(supervisor)
    lock = None if lock_path is None else _wait_for_lock(lock_path, supervisor, keep_going)
    if lock_path is not None and lock is None:
        log.info("stopped before %s was free: never started", lock_path)
        return
    log.info("workers started (pid %d): %s", os.getpid(), ", ".join(loop.name for loop in loops))
    try:
        supervisor.run(keep_going)
    except KeyboardInterrupt:
        supervisor.shutdown()
    finally:
        if lock is not None:
            lock.close()
    if not keep_going():
        log.info("parent process %s is gone", parent_pid)
    log.info("workers stopped")

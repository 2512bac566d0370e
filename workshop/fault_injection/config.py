"""Settings, results and counters of a fault-injection run, and its retry backoff."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from workshop.bench_common import (
    format_table,
)

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

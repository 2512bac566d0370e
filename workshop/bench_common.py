"""Shared pieces of tokenbill's benchmark scripts: a throwaway migrated database, connections
that act like the app, a concurrent load runner, percentiles and plain-text tables.

Why a module: every benchmark needs the same setup (a database of its own, migrated with the
real migration runner, the app's role) and the same way of reporting numbers, so results from
different scripts read alike. Benchmarks print numbers; they never assert on timing.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from webapp.db import APP_ROLE, connect_as
from webapp.ops import migrate


# ============================================================================================
# Databases and connections
# ============================================================================================
def resolve_admin_url(cli_value: str | None) -> str:
    """Pick the server to benchmark on: --database-url, then DATABASE_ADMIN_URL."""
    url = cli_value or os.environ.get("DATABASE_ADMIN_URL")
    if not url:
        raise SystemExit("pass --database-url or set DATABASE_ADMIN_URL (a superuser URL)")
    return url


@contextlib.contextmanager
def bench_database(admin_url: str, name: str | None = None, keep: bool = False) -> Iterator[str]:
    """Create a fresh database, migrate it with webapp.ops.migrate, yield its URL, then drop it.

    The name defaults to ``tokenbill_bench_<pid>`` so concurrent runs never share data.
    """
    name = name or f"tokenbill_bench_{os.getpid()}"
    ident = sql.Identifier(name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(ident))
        conn.execute(sql.SQL("create database {}").format(ident))
    url = make_conninfo(admin_url, dbname=name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(ident))


def connect_owner(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection as the database owner, for setup and measurements of plans."""
    return psycopg.connect(url, autocommit=True)


def connect_as_app(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection acting as tokenbill_app, exactly as the web app's pool does."""
    return connect_as(url, APP_ROLE, autocommit=True)


def create_admin(conn: psycopg.Connection[Any], email: str | None = None) -> uuid.UUID:
    """Register an account and make it an admin (api.set_admin is owner-only)."""
    email = email or f"bench-admin-{uuid.uuid4().hex[:8]}@example.test"
    conn.execute("select api.register_user(%s, 'bench-not-a-password-hash')", [email])
    row = conn.execute("select api.set_admin(%s)", [email]).fetchone()
    assert row is not None
    return row[0]


def create_funded_users(
    conn: psycopg.Connection[Any], admin_id: uuid.UUID, count: int, tokens: int, tag: str
) -> list[uuid.UUID]:
    """Register ``count`` accounts through api.register_user and fund each via api.admin_adjust.

    Both happen server-side in one statement each, so a thousand accounts take about a second.
    """
    prefix = f"bench-{tag}-{uuid.uuid4().hex[:6]}-"
    rows = conn.execute(
        "select api.register_user(%s || g || '@example.test', 'bench-not-a-password-hash')"
        " from generate_series(1, %s) g order by g",
        [prefix, count],
    ).fetchall()
    ids = [r[0] for r in rows]
    if tokens:
        conn.execute(
            "select api.admin_adjust(%s, u, %s, 'benchmark funding') from unnest(%s::uuid[]) u",
            [admin_id, tokens, ids],
        )
    return ids


def ledger_audit(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Any, ...]], float]:
    """Run api.ledger_audit() and time it (it scans the whole ledger, so it is reported apart)."""
    started = time.perf_counter()
    rows = conn.execute("select * from api.ledger_audit()").fetchall()
    return rows, time.perf_counter() - started


# ============================================================================================
# Statistics
# ============================================================================================
def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values (so a missing measurement prints as such)."""
    return statistics.median(values) if values else math.nan


@dataclass
class Sample:
    """One measured run: how many operations, over how long, and each one's latency in ms."""

    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def ops(self) -> int:
        return len(self.latencies_ms)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else math.nan

    def p(self, pct: float) -> float:
        return percentile(self.latencies_ms, pct)


Operation = Callable[[psycopg.Connection[Any], int, int], bool]
"""op(conn, client_index, op_index) -> success; timed around the call."""


def run_clients(
    url: str,
    clients: int,
    op: Operation,
    seconds: float | None = None,
    ops_per_client: int | None = None,
    connect: Callable[[str], psycopg.Connection[Any]] = connect_owner,
) -> Sample:
    """Run ``op`` from ``clients`` threads, each on its own connection, for a fixed time or count.

    Connections are the owner's by default: api.consume and api.grant_for_payment are internal
    since 0013 (callable only through the definer functions that use them), and the role a
    connection acts as does not change what a statement costs.

    Connections are opened before the clock starts; all clients start together on a barrier.
    Throughput is total operations over the wall time from start until the last client stops.
    """
    if (seconds is None) == (ops_per_client is None):
        raise ValueError("give exactly one of seconds or ops_per_client")
    barrier = threading.Barrier(clients + 1)
    per_client: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    errors: list[BaseException] = []
    deadline = [math.inf]

    def client(index: int) -> None:
        try:
            conn = connect(url)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        with conn:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return
            timings = per_client[index]
            i = 0
            try:
                while True:
                    if ops_per_client is not None and i >= ops_per_client:
                        break
                    started = time.perf_counter()
                    if started >= deadline[0]:
                        break
                    ok = op(conn, index, i)
                    timings.append((time.perf_counter() - started) * 1000.0)
                    if not ok:
                        failures[index] += 1
                    i += 1
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: reported below
        barrier.wait()
    started = time.perf_counter()
    if seconds is not None:
        deadline[0] = started + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Sample(
        seconds=elapsed,
        latencies_ms=[x for timings in per_client for x in timings],
        failures=sum(failures),
    )


def time_queries(
    conn: psycopg.Connection[Any], query: str, params: Sequence[Any], repeat: int
) -> Sample:
    """Run one query ``repeat`` times on one connection, fetching all rows; time each."""
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        conn.execute(query, params).fetchall()  # type: ignore[arg-type]  # fixed benchmark SQL
        latencies.append((time.perf_counter() - t0) * 1000.0)
    return Sample(seconds=time.perf_counter() - started, latencies_ms=latencies)


# ============================================================================================
# Output
# ============================================================================================
def fmt(value: float | int | str, digits: int = 2) -> str:
    """Format a table cell: integers with thousands separators, floats with ``digits``."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a Markdown pipe table (readable in a terminal, pasteable into docs as is).

    The first column and columns of text are left-aligned, numeric columns right-aligned.
    """
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    left = [
        i == 0 or any(isinstance(row[i], str) and not row[i].isdigit() for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if left[i] else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "".join(
        "|" + ("-" * (w + 2) if left[i] else "-" * (w + 1) + ":") for i, w in enumerate(widths)
    )
    return "\n".join([line(list(headers)), rule + "|", *(line(r) for r in cells)])


def parse_table(text: str) -> list[list[str]]:
    """Read back a table printed by format_table (header first, rule dropped); for tests."""
    rows = []
    for raw in text.strip().splitlines():
        if not raw.startswith("|") or set(raw) <= set("|-: "):
            continue
        rows.append([c.strip() for c in raw.strip().strip("|").split("|")])
    return rows


def parse_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in a benchmark's output, each as rows of cells (header first)."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(parse_table("\n".join(block)))
            block = []
    return tables


def progress(message: str) -> None:
    """Note progress on stderr so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)

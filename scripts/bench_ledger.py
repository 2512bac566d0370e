"""Benchmark the token ledger in PostgreSQL: consume throughput and latency, scale, history.

Why: every agent request calls api.consume, so its cost is the service's cost floor. This
prints numbers (never asserts on them) for four questions:

1. throughput — api.consume from N concurrent clients on one hot account and spread over many
   accounts, alternated round by round with a baseline: a bare conditional UPDATE on an
   identical table. The ratio is what the ledger's bookkeeping costs.
2. scale — consume latency with a small and a large ledger: it must stay flat, since nothing on
   the hot path may scan the ledger. Rows are bulk-loaded legitimately (balances match).
3. history — the history page's queries for one user with a million ledger rows.
4. explain — the plans api.consume's statements really use (auto_explain), and the plans of
   the replay lookup and the history queries.

It creates and drops its own database (``tokenbill_bench_<pid>``), migrated with
scripts.migrate, and acts as tokenbill_app like the app does. Tables go to stdout (Markdown),
progress to stderr.

Usage: ``python -m scripts.bench_ledger [--database-url SUPERUSER_URL] [--quick]``
(the URL defaults to DATABASE_ADMIN_URL).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from scripts import migrate
from scripts.bench_common import (
    Sample,
    bench_database,
    connect_owner,
    create_admin,
    create_funded_users,
    format_table,
    ledger_audit,
    median,
    progress,
    resolve_admin_url,
    run_clients,
    time_queries,
)

PARTS = ("throughput", "scale", "history", "explain")
HISTORY_PER_ACCOUNT = 20  # ledger rows each throughput account starts with
HEADROOM = 1_000_000  # tokens left on each bulk-loaded account for the consumes that follow

CONSUME_SQL = "select ok from api.consume(%s, %s)"
BASELINE_SQL = "update public.bench_accounts set tokens = tokens - 1 where id = %s and tokens >= 1"
HISTORY_PAGE_SQL = (
    "select * from api.ledger_entries where user_id = %s order by id desc limit 50 offset %s"
)
HISTORY_COUNT_SQL = "select count(*) from api.ledger_entries where user_id = %s"
# What the history page runs (keyset, ?before=<id>): one index range scan at any depth.
HISTORY_KEYSET_SQL = (
    "select * from api.ledger_entries where user_id = %s and id < %s order by id desc limit 50"
)
PURCHASES_SQL = "select * from api.purchases where user_id = %s order by created_at desc limit 50"
REPLAY_LOOKUP_SQL = (
    "select l.balance_after from tokenbill.ledger l"
    " where l.user_id = $1 and l.request_id = $2 and l.kind = 'consumption'"
)

Out = Callable[[str], None]


@dataclass
class Options:
    """Sizes of one run; --quick swaps in smaller ones."""

    clients: int = 16
    accounts: int = 1000
    rounds: int = 3
    round_seconds: float = 3.0
    ledger_rows: tuple[int, ...] = (10_000, 5_000_000)
    scale_users: int = 1000
    latency_ops: int = 2000
    history_rows: int = 1_000_000
    history_purchases: int = 200
    history_queries: int = 100
    deep_offsets: tuple[int, ...] = (10_000, 100_000)
    parts: tuple[str, ...] = PARTS


QUICK = {
    "rounds": 2,
    "round_seconds": 1.5,
    "ledger_rows": (10_000, 200_000),
    "latency_ops": 500,
    "history_rows": 100_000,
    "history_queries": 30,
    "deep_offsets": (1_000, 10_000),
}


@dataclass
class Results:
    """What a run measured, for callers that want more than the printed tables."""

    throughput: dict[str, list[Sample]] = field(default_factory=dict)
    audits: dict[str, int] = field(default_factory=dict)


# ============================================================================================
# Helpers
# ============================================================================================
def table_stats(conn: psycopg.Connection[Any], table: str) -> tuple[int, int]:
    """(sequential scans, rows read by any scan) of a tokenbill table, from the statistics.

    Rows read (seq_tup_read plus every index's idx_tup_read) is the plan-independent check
    that a statement does not walk the table: a scan of an unsuitable index shows up here
    even though it is no sequential scan.
    """
    row = conn.execute(
        """
        select coalesce(t.seq_scan, 0),
               coalesce(t.seq_tup_read, 0)
               + coalesce((select sum(i.idx_tup_read) from pg_stat_user_indexes i
                            where i.relid = t.relid), 0)
          from pg_stat_user_tables t
         where t.schemaname = 'tokenbill' and t.relname = %s
        """,
        [table],
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def settle_stats() -> None:
    """Give closed backends' statistics a moment to reach the shared counters."""
    time.sleep(0.5)


def ledger_count(conn: psycopg.Connection[Any]) -> int:
    """Exact number of ledger rows (a scan, but only between measurements)."""
    row = conn.execute("select count(*) from tokenbill.ledger").fetchone()
    assert row is not None
    return int(row[0])


LOAD_SQL = """
    insert into tokenbill.ledger
        (user_id, kind, delta, balance_after, request_id, reason, actor_id)
    select t.user_id,
           case when g = 1 then 'admin_adjustment' else 'consumption' end::tokenbill.ledger_kind,
           case when g = 1 then t.n - 1 + %(headroom)s else -1 end,
           u.balance + t.n - 1 + %(headroom)s - (g - 1),
           case when g > 1 then %(prefix)s || g end,
           case when g = 1 then 'benchmark bulk load' end,
           case when g = 1 then %(admin)s::uuid end
      from unnest(%(ids)s::uuid[], %(counts)s::int[]) as t (user_id, n)
      join tokenbill.users u on u.id = t.user_id
     cross join lateral generate_series(1, t.n) g
     order by g::float8 / t.n, t.user_id
"""


def _load_chunk(
    url: str, admin_id: uuid.UUID, pairs: Sequence[tuple[uuid.UUID, int]], tag: str
) -> int:
    """One transaction: lock the users, insert their rows, move their balances to match."""
    ids = [u for u, _ in pairs]
    with connect_owner(url) as conn, conn.transaction():
        conn.execute("set local work_mem = '1GB'")  # sort the rows in memory
        conn.execute("select from tokenbill.users where id = any(%s) for update", [ids])
        cur = conn.execute(
            LOAD_SQL,  # type: ignore[arg-type]  # fixed benchmark SQL
            {
                "headroom": HEADROOM,
                "prefix": f"bulk-{tag}-",
                "admin": admin_id,
                "ids": ids,
                "counts": [n for _, n in pairs],
            },
        )
        conn.execute(
            "update tokenbill.users set balance = balance + %s where id = any(%s)",
            [HEADROOM, ids],
        )
        return cur.rowcount


def bulk_load_ledger(
    url: str,
    admin_id: uuid.UUID,
    rows_per_user: Sequence[tuple[uuid.UUID, int]],
    tag: str,
    workers: int = 0,
) -> tuple[int, float]:
    """Append ledger rows for many users with INSERT … SELECT, keeping balances consistent.

    Each user gets an admin_adjustment credit followed by (n - 1) one-token consumptions, with
    the balance_after a real run would have produced, ending HEADROOM tokens above the starting
    balance; users.balance moves by the same amount in the same transaction, so
    api.ledger_audit() stays empty. A user's rows are interleaved with other users' in
    proportion to their counts, as live traffic would leave them. Users are split over one
    statement per CPU (each user wholly in one), since triggers and foreign-key checks make
    the insert CPU-bound. Ends with VACUUM (ANALYZE) and CHECKPOINT, which autovacuum and the
    checkpointer would do anyway after such a load, so measurements that follow do not pay for
    it. Returns (rows inserted, seconds).
    """
    pairs = sorted(((u, n) for u, n in rows_per_user if n > 0), key=lambda p: -p[1])
    if not pairs:
        return 0, 0.0
    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs)))
    chunks: list[list[tuple[uuid.UUID, int]]] = [[] for _ in range(workers)]
    sizes = [0] * workers
    for pair in pairs:  # greedy: the biggest users first, each to the lightest chunk
        k = sizes.index(min(sizes))
        chunks[k].append(pair)
        sizes[k] += pair[1]
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        inserted = sum(pool.map(lambda c: _load_chunk(url, admin_id, c, tag), chunks))
    with connect_owner(url) as conn:
        conn.execute("vacuum (analyze) tokenbill.ledger, tokenbill.users")
        conn.execute("checkpoint")
    return inserted, time.perf_counter() - started


def consume_op(
    pick: Callable[[int, int], uuid.UUID], tag: str
) -> Callable[[psycopg.Connection[Any], int, int], bool]:
    """An operation calling api.consume with a request id unique to (tag, client, op)."""

    def op(conn: psycopg.Connection[Any], client: int, i: int) -> bool:
        row = conn.execute(CONSUME_SQL, [pick(client, i), f"{tag}-{client}-{i}"]).fetchone()
        return bool(row and row[0])

    return op


def baseline_op(
    pick: Callable[[int, int], uuid.UUID],
) -> Callable[[psycopg.Connection[Any], int, int], bool]:
    """An operation running the bare conditional UPDATE the ledger is compared against."""

    def op(conn: psycopg.Connection[Any], client: int, i: int) -> bool:
        return conn.execute(BASELINE_SQL, [pick(client, i)]).rowcount == 1

    return op


def random_picker(ids: Sequence[uuid.UUID], clients: int, seed: int) -> Callable[[int, int], Any]:
    """Each client draws accounts from its own seeded generator (threads share no state)."""
    rngs = [random.Random(seed * 1_000 + c) for c in range(clients)]
    return lambda client, _i: rngs[client].choice(ids)


def plan_nodes(plan: dict[str, Any]) -> list[str]:
    """Flatten a JSON plan into 'Node Type [index] on relation' strings, depth first."""
    label = plan["Node Type"]
    if plan.get("Index Name"):
        label += f" using {plan['Index Name']}"
    if plan.get("Relation Name"):
        label += f" on {plan['Relation Name']}"
    nodes = [label]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


# ============================================================================================
# 1. Throughput: consume vs. a bare UPDATE, hot and spread
# ============================================================================================
def run_throughput(url: str, opts: Options, out: Out, results: Results) -> None:
    """Alternate consume/baseline × hot/spread for several rounds; print per-round and medians."""
    progress(f"throughput: creating {opts.accounts} accounts with some history")
    with connect_owner(url) as conn:
        admin = create_admin(conn)
        ids = create_funded_users(conn, admin, opts.accounts, 0, "tp")
    # A ledger that already holds consumptions, analyzed: the statistics of a running system.
    # (On a fresh ledger whose statistics show no consumption rows at all, the planner may
    # pick a worse index for consume's replay lookup until autovacuum analyzes; see
    # docs/performance.md.)
    bulk_load_ledger(url, admin, [(u, HISTORY_PER_ACCOUNT) for u in ids], "tp")
    with connect_owner(url) as conn:
        conn.execute(
            "create table public.bench_accounts (id uuid primary key, tokens integer not null)"
        )
        conn.execute("insert into public.bench_accounts select id, balance from tokenbill.users")
        conn.execute("grant select, update on public.bench_accounts to tokenbill_app")
        conn.execute("vacuum analyze")
        before = table_stats(conn, "ledger")

    hot = ids[0]
    scenarios: list[tuple[str, Callable[[int], Callable[..., bool]]]] = [
        ("consume-hot", lambda r: consume_op(lambda _c, _i: hot, f"hot{r}")),
        ("baseline-hot", lambda r: baseline_op(lambda _c, _i: hot)),
        (
            "consume-spread",
            lambda r: consume_op(random_picker(ids, opts.clients, r), f"spread{r}"),
        ),
        ("baseline-spread", lambda r: baseline_op(random_picker(ids, opts.clients, r))),
    ]
    samples: dict[str, list[Sample]] = {name: [] for name, _ in scenarios}
    rows: list[list[Any]] = []
    for r in range(1, opts.rounds + 1):
        for name, make_op in scenarios:
            progress(f"throughput: round {r}/{opts.rounds} {name}")
            s = run_clients(url, opts.clients, make_op(r), seconds=opts.round_seconds)
            if s.failures:
                raise RuntimeError(f"{name}: {s.failures} operations were refused")
            samples[name].append(s)
            rows.append([name, str(r), s.ops, s.ops_per_s, s.p(50), s.p(99)])
    for name, _ in scenarios:
        ss = samples[name]
        rows.append(
            [
                name,
                "median",
                int(median([s.ops for s in ss])),
                median([s.ops_per_s for s in ss]),
                median([s.p(50) for s in ss]),
                median([s.p(99) for s in ss]),
            ]
        )
    results.throughput = samples

    consumes = sum(x.ops for name, ss in samples.items() if name.startswith("consume") for x in ss)
    with connect_owner(url) as conn:
        settle_stats()
        after = table_stats(conn, "ledger")
        audit_rows, audit_s = ledger_audit(conn)
        total = ledger_count(conn)
    results.audits["throughput"] = len(audit_rows)

    out(f"## Consume throughput: {opts.clients} clients, {opts.round_seconds:g} s per run\n")
    out(format_table(["scenario", "round", "ops", "ops/s", "p50 ms", "p99 ms"], rows))
    out("")

    def ratio_row(kind: str) -> list[Any]:
        c, b = samples[f"consume-{kind}"], samples[f"baseline-{kind}"]
        return [
            kind,
            median([s.ops_per_s for s in c]) / median([s.ops_per_s for s in b]),
            median([s.p(50) for s in c]) / median([s.p(50) for s in b]),
            median([s.p(99) for s in c]) / median([s.p(99) for s in b]),
        ]

    out(
        format_table(
            ["consume / baseline", "ops/s ratio", "p50 ratio", "p99 ratio"],
            [ratio_row("hot"), ratio_row("spread")],
        )
    )
    out("")
    out(
        f"ledger during the consume runs: {after[0] - before[0]} sequential scans,"
        f" {(after[1] - before[1]) / consumes:.2f} rows read per consume;"
        f" ledger rows afterwards: {total:,}"
    )
    out(f"ledger audit: {len(audit_rows)} rows ({audit_s:.2f} s)\n")


# ============================================================================================
# 2–4. Scale, history, explain (one database, growing)
# ============================================================================================
@dataclass
class ScaleDb:
    """The accounts the scale/history/explain parts share."""

    url: str
    admin: uuid.UUID
    users: list[uuid.UUID]
    loads: int = 0
    heavy: uuid.UUID | None = None

    def load(self, pairs: Sequence[tuple[uuid.UUID, int]]) -> tuple[int, float]:
        """Bulk-load rows with a request-id prefix no earlier load used."""
        self.loads += 1
        return bulk_load_ledger(self.url, self.admin, pairs, f"l{self.loads}")


def setup_scale(url: str, opts: Options) -> ScaleDb:
    """Create the shared admin and the accounts whose ledgers grow."""
    with connect_owner(url) as conn:
        admin = create_admin(conn)
        users = create_funded_users(conn, admin, opts.scale_users, 0, "scale")
    return ScaleDb(url, admin, users)


def measure_consume(
    db: ScaleDb, opts: Options, tag: str
) -> tuple[Sample, Sample, tuple[int, float]]:
    """Single-client consume latency and N-client spread throughput; with the ledger's
    (sequential scans, rows read per consume) over both."""
    users = db.users
    with connect_owner(db.url) as conn:
        settle_stats()  # the load's and count's scans must not land in this measurement
        before = table_stats(conn, "ledger")
    single = run_clients(
        db.url,
        1,
        consume_op(lambda _c, i: users[i % len(users)], f"{tag}-single"),
        ops_per_client=opts.latency_ops,
    )
    spread = run_clients(
        db.url,
        opts.clients,
        consume_op(random_picker(users, opts.clients, 99), f"{tag}-spread"),
        seconds=opts.round_seconds,
    )
    with connect_owner(db.url) as conn:
        settle_stats()
        after = table_stats(conn, "ledger")
    if single.failures or spread.failures:
        raise RuntimeError(f"scale {tag}: consume refused")
    return (
        single,
        spread,
        (after[0] - before[0], (after[1] - before[1]) / (single.ops + spread.ops)),
    )


def run_scale(db: ScaleDb, opts: Options, out: Out) -> None:
    """Grow the ledger to each size in turn and measure consume at each."""
    rows: list[list[Any]] = []
    for target in sorted(opts.ledger_rows):
        with connect_owner(db.url) as conn:
            need = max(target - ledger_count(conn), 0)
            per_user = need // len(db.users)
            progress(f"scale: loading {per_user * len(db.users):,} ledger rows")
            inserted, load_s = db.load([(u, per_user) for u in db.users])
            total = ledger_count(conn)
        progress(f"scale: measuring consume at {total:,} ledger rows")
        single, spread, (seq, read) = measure_consume(db, opts, f"s{target}")
        rows.append(
            [
                total,
                total // len(db.users),
                inserted,
                load_s,
                single.p(50),
                single.p(95),
                single.p(99),
                spread.ops_per_s,
                spread.p(50),
                spread.p(99),
                seq,
                read,
            ]
        )
    out(
        f"## Consume vs. ledger size ({len(db.users):,} accounts; 1 client × "
        f"{opts.latency_ops} calls, then {opts.clients} clients × {opts.round_seconds:g} s)\n"
    )
    out(
        format_table(
            [
                "ledger rows",
                "rows/account",
                "loaded",
                "load s",
                "1c p50 ms",
                "1c p95 ms",
                "1c p99 ms",
                f"{opts.clients}c ops/s",
                f"{opts.clients}c p50 ms",
                f"{opts.clients}c p99 ms",
                "ledger seq scans",
                "ledger rows read/op",
            ],
            rows,
        )
    )
    out("")


def setup_history(db: ScaleDb, opts: Options) -> tuple[int, float, int]:
    """Give one account history_rows ledger rows (interleaved with as many rows of others)
    and history_purchases real grants; returns (rows loaded, seconds, heavy account rows)."""
    with connect_owner(db.url) as conn:
        heavy = create_funded_users(conn, db.admin, 1, 0, "history")[0]
        db.heavy = heavy
        others = opts.history_rows // len(db.users)
        progress(f"history: loading {opts.history_rows:,} rows for one account")
        inserted, load_s = db.load([(heavy, opts.history_rows)] + [(u, others) for u in db.users])
        conn.execute(
            "select api.grant_for_payment('pi_bench_' || %s || '_' || g, %s::text, 'tokens_100',"
            " 500, 'usd') from generate_series(1, %s) g",
            [uuid.uuid4().hex[:8], str(heavy), opts.history_purchases],
        )
        conn.execute("analyze")
        row = conn.execute(
            "select count(*) from tokenbill.ledger where user_id = %s", [heavy]
        ).fetchone()
        assert row is not None
    return inserted, load_s, int(row[0])


def run_history(db: ScaleDb, opts: Options, out: Out) -> None:
    """Time the history page's queries for the heavy account."""
    inserted, load_s, heavy_rows = setup_history(db, opts)
    heavy = db.heavy
    typical = db.users[0]
    with connect_owner(db.url) as conn:
        row = conn.execute(
            "select count(*) from tokenbill.ledger where user_id = %s", [typical]
        ).fetchone()
        typical_rows = int(row[0]) if row else 0
        cursors = {
            o: conn.execute(
                "select id from tokenbill.ledger where user_id = %s order by id desc"
                " offset %s limit 1",
                [heavy, o],
            ).fetchone()[0]  # type: ignore[index]
            for o in opts.deep_offsets
        }
    queries: list[tuple[str, str, list[Any]]] = [
        ("ledger page 1 (offset 0)", HISTORY_PAGE_SQL, [heavy, 0]),
        *(
            (f"ledger page {o // 50 + 1:,} (offset {o:,})", HISTORY_PAGE_SQL, [heavy, o])
            for o in opts.deep_offsets
        ),
        *(
            (f"ledger keyset at depth {o:,} (the page's query)", HISTORY_KEYSET_SQL, [heavy, c])
            for o, c in cursors.items()
        ),
        ("ledger count(*) for the user", HISTORY_COUNT_SQL, [heavy]),
        (f"typical account ({typical_rows:,} rows): page 1", HISTORY_PAGE_SQL, [typical, 0]),
        (f"purchases ({opts.history_purchases} payments)", PURCHASES_SQL, [heavy]),
    ]
    rows: list[list[Any]] = []
    with PlanCapture(db.url) as pc:
        total = ledger_count_as_app(pc.conn)
        for label, query, params in queries:
            progress(f"history: {label}")
            # Warm up past psycopg's prepare threshold (5), so that what is timed is what a
            # pooled app connection runs: a prepared statement.
            time_queries(pc.conn, query, params, 6)
            repeat = (
                opts.history_queries if "count" not in label else max(opts.history_queries // 5, 3)
            )
            s = time_queries(pc.conn, query, params, repeat)
            nodes = pc.plans(query, params)[-1][1]
            rows.append([label, s.ops, s.p(50), s.p(95), s.p(99), " > ".join(nodes)])
    out(
        f"## History page queries: one account with {heavy_rows:,} ledger rows "
        f"(ledger: {total:,} rows; loaded {inserted:,} in {load_s:.1f} s)\n"
    )
    out(format_table(["query", "runs", "p50 ms", "p95 ms", "p99 ms", "plan"], rows))
    out("")


def ledger_count_as_app(conn: psycopg.Connection[Any]) -> int:
    """Total ledger rows, read the way the app can (through api.ledger_entries)."""
    row = conn.execute("select count(*) from api.ledger_entries").fetchone()
    assert row is not None
    return int(row[0])


class PlanCapture:
    """A connection acting as ``role`` whose plans auto_explain reports on demand.

    Why auto_explain rather than EXPLAIN: it shows the plans of the statements inside
    PL/pgSQL functions and triggers, and the plan a prepared statement really ran (custom or
    generic), which is what the app's pooled connections run after five executions.
    Needs a superuser URL (LOAD and auto_explain settings), which the benchmark has.
    """

    SETTINGS: ClassVar[dict[str, str]] = {
        "log_nested_statements": "on",
        "log_analyze": "on",
        "log_buffers": "on",
        "log_timing": "off",
        "log_format": "json",
        "log_level": "notice",
        "log_min_duration": "-1",
    }

    def __init__(self, url: str, role: str | None = "tokenbill_app") -> None:
        self.captured: list[str] = []
        self.conn = connect_owner(url)
        self.conn.execute("load 'auto_explain'")
        self.conn.add_notice_handler(lambda d: self.captured.append(d.message_primary or ""))
        for name, value in self.SETTINGS.items():
            self._set(name, value)
        self.role = role  # None: the owner, for internal functions (api.consume since 0013)
        self._act_as_role()

    def _act_as_role(self) -> None:
        if self.role:
            self.conn.execute(sql.SQL("set role {}").format(sql.Identifier(self.role)))

    def _set(self, name: str, value: str) -> None:
        self.conn.execute(
            sql.SQL("select set_config({}, {}, false)").format(f"auto_explain.{name}", value)
        )

    def execute(self, query: str, params: Sequence[Any]) -> list[Any]:
        """Run a statement as the app would; fetch its rows."""
        return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def plans(self, query: str, params: Sequence[Any]) -> list[tuple[str, list[str]]]:
        """Run the statement once more with auto_explain on; (statement, plan nodes) each."""
        self.conn.execute("reset role")
        self._set("log_min_duration", "0")
        self._act_as_role()
        self.captured.clear()
        try:
            self.execute(query, params)
        finally:
            self.conn.execute("reset role")
            self._set("log_min_duration", "-1")
            self._act_as_role()
        found = []
        for message in self.captured:
            start = message.find("{")
            if start >= 0:
                doc = json.loads(message[start:])
                text = " ".join(doc.get("Query Text", "").split())
                found.append((text, plan_nodes(doc["Plan"])))
        return found

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PlanCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def consume_plans(url: str, user_id: uuid.UUID) -> list[tuple[str, list[str]]]:
    """The plans of every statement api.consume runs: a new request, then its replay.

    Seven warm-up calls first: PL/pgSQL may switch to a generic plan after five executions,
    and the generic plan is what a busy server runs.
    """
    tag = uuid.uuid4().hex[:8]
    with PlanCapture(url, role=None) as pc:
        for i in range(7):
            pc.execute(CONSUME_SQL, [user_id, f"explain-{tag}-{i}"])
        found = pc.plans(CONSUME_SQL, [user_id, f"explain-{tag}-new"])
        return found + pc.plans(CONSUME_SQL, [user_id, f"explain-{tag}-new"])  # replay


def run_explain(db: ScaleDb, opts: Options, out: Out) -> None:
    """Print the plans consume's statements use, and the replay lookup's EXPLAIN ANALYZE."""
    user = db.heavy or db.users[0]
    if not db.loads:  # run on its own: give the account a ledger and tokens first
        db.load([(user, 100)])
    plans = consume_plans(db.url, user)
    seen: dict[str, list[str]] = {}
    for text, nodes in plans:
        if text.startswith("select ok from api.consume"):
            continue  # the top-level call itself: a Function Scan over the function's result
        seen.setdefault(text, nodes)
    rows = [[text[:90], " > ".join(nodes)] for text, nodes in seen.items()]
    seq = sum(1 for nodes in seen.values() for n in nodes if n.startswith("Seq Scan"))
    out("## Plans of api.consume's statements (auto_explain, after warm-up)\n")
    out(format_table(["statement", "plan"], rows))
    out("")
    out(f"sequential scans in api.consume: {seq}\n")

    with connect_owner(db.url) as conn:
        row = conn.execute(
            "select request_id from tokenbill.ledger where user_id = %s and kind = 'consumption'"
            " order by id desc limit 1",
            [user],
        ).fetchone()
        request_id = row[0] if row else "none"
        conn.execute(f"prepare replay_lookup (uuid, text) as {REPLAY_LOOKUP_SQL}")  # type: ignore[arg-type]
        conn.execute("set plan_cache_mode = force_generic_plan")
        explain = sql.SQL("explain (analyze, buffers) execute replay_lookup({}, {})")
        plan = conn.execute(explain.format(str(user), request_id)).fetchall()
    out("Replay lookup, generic plan, EXPLAIN (ANALYZE, BUFFERS):\n")
    out("```")
    out(REPLAY_LOOKUP_SQL)
    out("\n".join(r[0] for r in plan))
    out("```\n")


# ============================================================================================
# Entry point
# ============================================================================================
def parse_sizes(value: str) -> tuple[int, ...]:
    """Parse '10000,5000000' (underscores allowed) into a tuple of ints."""
    return tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Options]:
    """Read the command line; explicit size flags override --quick."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", help="superuser URL (default: DATABASE_ADMIN_URL)")
    p.add_argument("--quick", action="store_true", help="small sizes (~25 s)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--clients", type=int)
    p.add_argument("--accounts", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--round-seconds", type=float)
    p.add_argument("--ledger-rows", type=parse_sizes, help="e.g. 10000,5000000")
    p.add_argument("--scale-users", type=int)
    p.add_argument("--latency-ops", type=int)
    p.add_argument("--history-rows", type=int)
    p.add_argument("--history-purchases", type=int)
    p.add_argument("--history-queries", type=int)
    p.add_argument("--deep-offsets", type=parse_sizes)
    p.add_argument("--keep-database", action="store_true", help="leave the databases behind")
    args = p.parse_args(argv)
    opts = Options(**(QUICK if args.quick else {}))
    for name in Options.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None and name != "parts":
            setattr(opts, name, value)
    opts.parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    unknown = set(opts.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args, opts


def describe_server(url: str) -> str:
    """One line saying what ran: server version, cores, CPU model."""
    with connect_owner(url) as conn:
        row = conn.execute("select current_setting('server_version')").fetchone()
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    version = row[0] if row else "?"
    return f"PostgreSQL {version}; {os.cpu_count()} CPUs ({cpu})"


def run(admin_url: str, opts: Options, out: Out = print, keep: bool = False) -> Results:
    """Run the selected parts, each group in a database of its own; return what was measured."""
    results = Results()
    started = time.perf_counter()
    versions = ", ".join(m.version for m in migrate.discover())
    out(f"# bench_ledger — {describe_server(admin_url)}; migrations {versions}\n")
    if "throughput" in opts.parts:
        name = f"tokenbill_bench_{os.getpid()}_tp"
        with bench_database(admin_url, name, keep=keep) as url:
            run_throughput(url, opts, out, results)
    if {"scale", "history", "explain"} & set(opts.parts):
        name = f"tokenbill_bench_{os.getpid()}_scale"
        with bench_database(admin_url, name, keep=keep) as url:
            db = setup_scale(url, opts)
            if "scale" in opts.parts:
                run_scale(db, opts, out)
            if "history" in opts.parts:
                run_history(db, opts, out)
            if "explain" in opts.parts:
                run_explain(db, opts, out)
            with connect_owner(url) as conn:
                total = ledger_count(conn)
                audit_rows, audit_s = ledger_audit(conn)
            results.audits["scale"] = len(audit_rows)
            out(
                f"ledger audit over {total:,} ledger rows: {len(audit_rows)} rows"
                f" ({audit_s:.2f} s)\n"
            )
    out(f"total time: {time.perf_counter() - started:.0f} s")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 1 if any ledger audit found a mismatch."""
    args, opts = parse_args(argv)
    results = run(resolve_admin_url(args.database_url), opts, keep=args.keep_database)
    return 1 if any(results.audits.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

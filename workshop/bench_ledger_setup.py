"""The ledger benchmark's settings, SQL, and bulk-loading and measuring helpers.

Shared by workshop/bench_ledger.py (the parts and the CLI) and workshop/bench_ledger_explain.py.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from workshop.bench_common import (
    Sample,
    connect_owner,
    create_admin,
    create_funded_users,
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

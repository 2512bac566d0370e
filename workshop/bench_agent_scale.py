"""An agent request's cost as the tables it writes grow: it must stay flat.

Every agent request leaves an exchange row (prompt, reply, hold) and a ledger ``reserve`` row
behind, so the two tables the hot path writes grow with every answer; nothing on that path may
read in proportion to them. For each size this bulk-loads settled exchanges, each with its
ledger row (copies of one real request's rows, balances moved to match: the audit stays
empty), spread over the accounts' conversations, then runs the agent request continuing the
account's conversation (``workshop/pgbench/agent_continue.sql``: begin + settle, as
``tokenbill_app``) under pgbench at one client and at 16, and reads from
``pg_stat_user_tables`` how many rows the requests read from each table and how many
sequential scans they made. The rows read per request is the flatness check that no machine
noise can blur; latency and tps are printed beside it.

    python -m workshop.bench_agent_scale [--sizes 10000,1000000,10000000] [--accounts 1000]

It creates and drops its own database. Numbers only; ``tests/workshop/test_bench_agent_scale.py``
runs it at a tiny size and checks the rows and the audit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from webapp.db import APP_ROLE, connect_as
from workshop.bench_common import (
    bench_database,
    connect_owner,
    format_table,
    ledger_audit,
    progress,
    resolve_admin_url,
)
from workshop.bench_ledger_setup import settle_stats, table_stats
from workshop.bench_pgbench import HOT_ID, PATHS, Run, Settings, load, run_pgbench

PATH = next(p for p in PATHS if p.key == "agent_continue")
TABLES = ("exchanges", "ledger", "conversations", "users")
TEMPLATE = "bench-agent-scale-template"  # the real request every loaded row copies
HEADERS = ["exchanges", "ledger rows", "load s", "1 client ms/request", "16 clients tps",
           *(f"{t} rows read/request" for t in TABLES), "seq scans"]  # fmt: skip

COPY_SQL = """
    with t as (
        select * from tokenbill.exchanges
         where user_id = %(template_user)s and request_id = %(template)s),
    x as (
        insert into tokenbill.exchanges (
            conversation_id, user_id, request_id, prompt, reply, reply_status, error, cost,
            completed_at, request_hash, agent, per_call, per_1k_input, per_1k_output, reserved,
            hold_status, input_chars, delivered_parts, delivered_chars, first_delivered_at,
            progress_at, expires_at, settled_at, charged, outcome)
        select a.id, a.id, %(prefix)s || g, t.prompt, t.reply, t.reply_status, t.error, t.cost,
               t.completed_at, t.request_hash, t.agent, t.per_call, t.per_1k_input,
               t.per_1k_output, t.reserved, t.hold_status, t.input_chars, t.delivered_parts,
               t.delivered_chars, t.first_delivered_at, t.progress_at, t.expires_at,
               t.settled_at, t.charged, t.outcome
          from t, unnest(%(ids)s::uuid[]) a (id), generate_series(1, %(n)s) g)
    insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id, reason)
    select a.id, 'reserve', -t.reserved, u.balance - g * t.reserved, %(prefix)s || g, l.reason
      from t
      join tokenbill.ledger l
        on l.user_id = t.user_id and l.request_id = t.request_id and l.kind = 'reserve'
     cross join unnest(%(ids)s::uuid[]) a (id)
      join tokenbill.users u on u.id = a.id
     cross join generate_series(1, %(n)s) g
     order by g, a.id
"""  # the ledger rows in order, so each account's last row carries its final balance


def account_ids(conn: Any) -> list[uuid.UUID]:
    """The spread accounts bench_pgbench.load made (not the hot one)."""
    rows = conn.execute(
        "select id from tokenbill.users where email like 'pgbench-%%' and email <> %s",
        [f"pgbench-{HOT_ID}@example.test"],
    ).fetchall()
    return [r[0] for r in rows]


def make_template(url: str, user_id: uuid.UUID) -> None:
    """One real agent request, settled, whose exchange and ledger rows the loads copy."""
    with connect_as(url, APP_ROLE, autocommit=True) as conn:
        conn.execute(
            "select * from api.begin_agent_request(%s, %s, %s, 'How many tokens does this"
            " cost?', 'bench', 'bench-request-hash', 300)",
            [user_id, TEMPLATE, user_id],
        )
        conn.execute(
            "select * from api.settle_agent_request(%s, %s, 'done', 'One token.', 31, '', 1)",
            [user_id, TEMPLATE],
        )


def _copy_chunk(url: str, template_user: uuid.UUID, ids: list[uuid.UUID], n: int, tag: str) -> int:
    """One transaction: ``n`` exchanges (and ledger rows) for each account in ``ids``."""
    with connect_owner(url) as conn, conn.transaction():
        conn.execute("select from tokenbill.users where id = any(%s) for update", [ids])
        cur = conn.execute(
            COPY_SQL,  # type: ignore[arg-type]  # fixed benchmark SQL
            {"template_user": template_user, "template": TEMPLATE, "prefix": f"{tag}-",
             "ids": ids, "n": n},
        )  # fmt: skip
        conn.execute(
            "update tokenbill.users u set balance = u.balance - %s * e.reserved"
            " from tokenbill.exchanges e"
            " where u.id = any(%s) and e.user_id = %s and e.request_id = %s",
            [n, ids, template_user, TEMPLATE],
        )
        return cur.rowcount


def grow(url: str, accounts: list[uuid.UUID], per_account: int, tag: str) -> float:
    """Add ``per_account`` exchanges to every account, one statement per CPU; seconds taken."""
    if per_account <= 0:
        return 0.0
    workers = max(1, min(os.cpu_count() or 1, len(accounts)))
    chunks = [accounts[k::workers] for k in range(workers)]
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda c: _copy_chunk(url, accounts[0], c, per_account, tag), chunks))
    with connect_owner(url) as conn:
        conn.execute("vacuum (analyze) tokenbill.exchanges, tokenbill.ledger, tokenbill.users")
        conn.execute("checkpoint")
    return time.perf_counter() - started


def counts(url: str) -> tuple[int, int]:
    with connect_owner(url) as conn:
        row = conn.execute(
            "select (select count(*) from tokenbill.exchanges),"
            " (select count(*) from tokenbill.ledger)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def stats(url: str) -> dict[str, tuple[int, int]]:
    settle_stats()
    with connect_owner(url) as conn:
        return {t: table_stats(conn, t) for t in TABLES}


def pgbench(url: str, clients: int, seconds: int, accounts: int) -> Run:
    """bench_pgbench's run of the agent request over the spread accounts; a failure stops."""
    settings = Settings(accounts, seconds, rounds=1, clients=clients, threads=min(clients, 2))
    run = run_pgbench(url, PATH, 1, accounts, settings)
    if run.failed or not run.transactions:
        raise SystemExit(f"pgbench failed: {run.failed} failed transaction(s)")
    return run


def measure(url: str, accounts: int, seconds: int) -> list[Any]:
    """One client, then 16; rows read per request and sequential scans over both runs."""
    before = stats(url)
    single = pgbench(url, 1, seconds, accounts)
    many = pgbench(url, 16, seconds, accounts)
    after = stats(url)
    requests = single.transactions + many.transactions
    read = [(after[t][1] - before[t][1]) / requests for t in TABLES]
    scans = sum(after[t][0] - before[t][0] for t in TABLES)
    return [1000.0 / single.tps, many.tps, *read, scans]  # one client: ms a request


def run(admin_url: str, sizes: Sequence[int], accounts: int, seconds: int) -> str:
    rows = []
    with bench_database(admin_url, f"tokenbill_bench_agent_scale_{os.getpid()}") as url:
        progress(f"loading {accounts:,} accounts")
        load(url, accounts)
        with connect_owner(url) as conn:
            ids = account_ids(conn)
        make_template(url, ids[0])
        for target in sorted(sizes):
            have, _ = counts(url)
            per_account = -(-max(target - have, 0) // len(ids))  # at least the size
            progress(f"loading {per_account * len(ids):,} exchanges")
            seconds_loading = grow(url, ids, per_account, f"s{target}")
            exchanges, ledger = counts(url)
            progress(f"measuring at {exchanges:,} exchanges")
            rows.append([exchanges, ledger, seconds_loading, *measure(url, accounts, seconds)])
        with connect_owner(url) as conn:
            audit, _ = ledger_audit(conn)
    return "\n".join(
        [
            f"pgbench -M prepared, {PATH.label}, {accounts:,} accounts, {seconds} s per run",
            "",
            format_table(HEADERS, rows),
            "",
            f"ledger audit {'empty' if not audit else f'{len(audit)} problem(s)'}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workshop.bench_agent_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", help="superuser URL (default: DATABASE_ADMIN_URL)")
    parser.add_argument("--sizes", default="10000,1000000,10000000", help="exchange counts")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=8, help="seconds per pgbench run")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    report = run(resolve_admin_url(args.database_url), sizes, args.accounts, args.seconds)
    print(report)
    return 0 if report.endswith("ledger audit empty") else 1


if __name__ == "__main__":
    sys.exit(main())

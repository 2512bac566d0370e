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
webapp.ops.migrate, and acts as tokenbill_app like the app does. Tables go to stdout (Markdown),
progress to stderr.

Usage: ``python -m workshop.bench_ledger [--database-url SUPERUSER_URL] [--quick]``
(the URL defaults to DATABASE_ADMIN_URL).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from webapp.ops import migrate
from workshop.bench_common import (
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
from workshop.bench_ledger_explain import (
    PlanCapture,
    ledger_count_as_app,
    run_explain,
)
from workshop.bench_ledger_setup import (  # re-exported names too
    HISTORY_COUNT_SQL,
    HISTORY_KEYSET_SQL,
    HISTORY_PAGE_SQL,
    HISTORY_PER_ACCOUNT,
    PARTS,
    PURCHASES_SQL,
    QUICK,
    Options,
    Out,
    Results,
    ScaleDb,
    baseline_op,
    bulk_load_ledger,
    consume_op,
    ledger_count,
    random_picker,
    settle_stats,
    setup_scale,
    table_stats,
)


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

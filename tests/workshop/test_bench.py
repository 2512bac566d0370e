"""Smoke runs of the benchmark code paths at tiny sizes: what they print and what they leave.

Benchmarks never assert timing; these tests check behaviour only: the tables have the rows
and columns the docs rely on, bulk loading keeps the ledger consistent with balances, and the
benchmark database is dropped afterwards.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from workshop import bench_ledger, bench_ledger_explain, bench_ledger_setup
from workshop.bench_common import (
    bench_database,
    connect_owner,
    create_admin,
    create_funded_users,
    format_table,
    ledger_audit,
    parse_table,
    parse_tables,
    percentile,
)

TINY = [
    "--clients", "3",
    "--accounts", "10",
    "--rounds", "2",
    "--round-seconds", "0.2",
    "--ledger-rows", "200,2000",
    "--scale-users", "10",
    "--latency-ops", "20",
    "--history-rows", "1000",
    "--history-purchases", "3",
    "--history-queries", "5",
    "--deep-offsets", "100",
]  # fmt: skip


def _database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url) as conn:
        return (
            conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone()
            is not None
        )


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0


def test_format_table_round_trips_and_aligns() -> None:
    text = format_table(["scenario", "ops", "p50 ms"], [["hot", 1234, 0.5], ["spread", 5, 12.345]])
    assert parse_table(text) == [
        ["scenario", "ops", "p50 ms"],
        ["hot", "1,234", "0.50"],
        ["spread", "5", "12.35"],
    ]
    assert text.splitlines()[1].endswith(":|")  # numbers are right-aligned


def test_bulk_load_keeps_balances_and_ledger_consistent(admin_url: str) -> None:
    name = "tokenbill_bench_test_bulk"
    with bench_database(admin_url, name) as url, connect_owner(url) as conn:
        admin = create_admin(conn)
        users = create_funded_users(conn, admin, 3, 50, "t")
        counts = [1, 7, 40]
        inserted, _ = bench_ledger_setup.bulk_load_ledger(
            url, admin, list(zip(users, counts, strict=True)), "x"
        )
        assert inserted == sum(counts)
        # a second load on top of the first continues each balance chain
        bench_ledger_setup.bulk_load_ledger(url, admin, [(users[2], 5)], "y")
        balances = dict(
            conn.execute(
                "select id, balance from api.accounts where id = any(%s)", [users]
            ).fetchall()
        )
        headroom = bench_ledger_setup.HEADROOM
        assert balances == {
            users[0]: 50 + headroom,
            users[1]: 50 + headroom,
            users[2]: 50 + 2 * headroom,
        }
        assert ledger_audit(conn)[0] == []
        # the funded accounts can spend the loaded tokens through the real API
        with bench_ledger_explain.PlanCapture(url, role=None) as pc:
            spent = pc.execute(bench_ledger_setup.CONSUME_SQL, [users[1], "after-load"])
            assert spent[0][0] is True
        assert ledger_audit(conn)[0] == []
    assert not _database_exists(admin_url, name)


def test_full_run_prints_every_table_and_leaves_an_empty_audit(
    admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_ledger.main(["--database-url", admin_url, *TINY]) == 0
    out = capsys.readouterr().out

    throughput, ratios, scale, history, plans = parse_tables(out)
    assert throughput[0] == ["scenario", "round", "ops", "ops/s", "p50 ms", "p99 ms"]
    scenarios = ["consume-hot", "baseline-hot", "consume-spread", "baseline-spread"]
    assert [(r[0], r[1]) for r in throughput[1:]] == [
        *((s, str(n)) for n in (1, 2) for s in scenarios),
        *((s, "median") for s in scenarios),
    ]
    assert all(int(r[2].replace(",", "")) > 0 for r in throughput[1:])

    assert ratios[0] == ["consume / baseline", "ops/s ratio", "p50 ratio", "p99 ratio"]
    assert [r[0] for r in ratios[1:]] == ["hot", "spread"]

    assert scale[0][0] == "ledger rows" and scale[0][-2:] == [
        "ledger seq scans",
        "ledger rows read/op",
    ]
    sizes = [int(r[0].replace(",", "")) for r in scale[1:]]
    assert len(sizes) == 2 and 200 <= sizes[0] < sizes[1]
    # tiny tables may well be seq-scanned
    assert all(r[-2].replace(",", "").isdigit() for r in scale[1:])

    assert [r[0].split(" (")[0] for r in history[1:]] == [
        "ledger page 1",
        "ledger page 3",
        "ledger keyset at depth 100",
        "ledger count(*) for the user",
        "typical account",
        "purchases",
    ]
    assert all(r[-1] for r in history[1:])  # each query shows its plan

    lookup = next(r for r in plans[1:] if r[0].startswith("select l.balance_after from tokenbill"))
    assert lookup[1] == "Index Scan using ledger_consumption_once on ledger"

    assert "ledger audit: 0 rows" in out  # throughput database
    assert "ledger rows: 0 rows" in out  # scale/history database
    assert "Index Scan using ledger_consumption_once" in out.split("Replay lookup")[1]
    for suffix in ("tp", "scale"):
        assert not _database_exists(admin_url, f"tokenbill_bench_{os.getpid()}_{suffix}")

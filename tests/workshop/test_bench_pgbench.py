"""Smoke run of workshop.bench_pgbench at tiny durations: every path runs under the real pgbench
(no failed transaction), the table has its rows and ratios, the ledger audit stays empty and
the databases are dropped. Never asserts on speed.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from workshop import bench_pgbench
from workshop.bench_common import parse_tables


def test_every_path_runs_clean_and_the_table_has_its_shape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_url = os.environ["DATABASE_ADMIN_URL"]
    argv = ["--database-url", admin_url, "--accounts", "20", "--seconds", "1", "--rounds", "1",
            "--clients", "2", "--threads", "1", "--before", "0016"]  # fmt: skip
    assert bench_pgbench.main(argv) == 0
    out = capsys.readouterr().out
    table, goals = parse_tables(out)
    header, rows = table[0], table[1:]
    assert header == bench_pgbench.TABLE_HEADERS
    labels = [p.label for p in bench_pgbench.PATHS]
    before = [f"{p.label} (at 0016)" for p in bench_pgbench.PATHS if p.ledger and p.since <= "0016"]
    assert [r[0] for r in rows] == labels + before
    for row in rows:
        assert float(row[1].replace(",", "")) > 0 and float(row[3].replace(",", "")) > 0, row
        assert row[5] == "2" and row[6] == "0", row  # hot + spread ran, nothing failed
        # the server is on this machine: its CPU per transaction is measured, and not zero
        assert float(row[7].replace(",", "")) > 0 and float(row[8].replace(",", "")) > 0, row
    assert rows[0][2] == rows[0][4] == "1.00"  # raw is its own reference
    assert [g[0] for g in goals[1:]] == [g[2] for g in bench_pgbench.GOALS]
    assert "ledger audit: 0 rows" in out
    with psycopg.connect(admin_url) as conn:
        left = conn.execute(
            "select datname from pg_database where datname like 'tokenbill_pgbench_%%'"
            " and datname like %s",
            [f"%_{os.getpid()}%"],
        ).fetchall()
    assert left == []


def test_a_failing_path_is_reported_as_failed() -> None:
    """The failure count is real: a script that errors counts, so the test above can fail."""
    admin_url = os.environ["DATABASE_ADMIN_URL"]
    broken = bench_pgbench.BenchPath("no_such_script", "missing")
    settings = bench_pgbench.Settings(accounts=1, seconds=1, rounds=1, clients=1, threads=1)
    run = bench_pgbench.run_pgbench(admin_url, broken, 0, 0, settings)
    assert run.tps == 0.0 and run.failed >= 1 and run.transactions == 0


def test_a_path_that_never_ran_is_a_dash_in_the_table_not_a_crash() -> None:
    """A path whose every run failed has no tps: the table still prints, with its failures."""
    raw, broken = bench_pgbench.PATHS[0].label, bench_pgbench.PATHS[1].label
    results = {
        (raw, "hot"): bench_pgbench.Result(tps=[100.0], cpu_us=[10.0], runs=1),
        (raw, "spread"): bench_pgbench.Result(tps=[200.0], cpu_us=[5.0], runs=1),
        (broken, "hot"): bench_pgbench.Result(failed=1, runs=1),
        (broken, "spread"): bench_pgbench.Result(failed=1, runs=1),
    }
    table, _goals = bench_pgbench.report(results, [raw, broken], raw)
    row = next(line for line in table.splitlines() if line.startswith(f"| {broken}"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == cells[3] == "-" and cells[6] == "2"

"""Smoke run of workshop.bench_pgbench at tiny durations: every path runs under the real pgbench
(no failed transaction), the table has its rows and ratios, the ledger audit stays empty and
the databases are dropped. Never asserts on speed.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from workshop import bench_pgbench
from workshop.bench_common import bench_database, parse_tables


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


# What one call of a path leaves in the tables it shares with the others: the rows it added or
# changed (by table), the balance's move, and the shape of the exchange and ledger rows.
_TRACE = """
select (select %(fund)s - balance from tokenbill.users where id = %(user)s) as spent,
       (select array_agg(kind::text || ' ' || delta order by id) from tokenbill.ledger
         where user_id = %(user)s and kind <> 'admin_adjustment') as ledger,
       (select array_agg(concat_ws(' ', hold_status, reserved, charged, reply_status,
                                   reply <> '', prompt <> '', settled_at is not null))
          from tokenbill.exchanges where user_id = %(user)s) as exchanges,
       (select xmin::text from tokenbill.conversations where id = %(user)s) as conversation
"""


def test_the_floor_writes_what_an_agent_request_writes() -> None:
    """agent_floor is the floor under agent_continue only while both leave the same rows: one
    token moved, one 'reserve' ledger row, one exchange settled with its reply, the account's
    conversation (on top of its list) left as it was. A change to what a request writes must
    change the floor too, or the ratio between them stops meaning anything."""
    admin_url = os.environ["DATABASE_ADMIN_URL"]
    name = f"tokenbill_pgbench_floor_{os.getpid()}"
    with bench_database(admin_url, name) as url:
        bench_pgbench.load(url, 2)
        traces = {}
        for account, key in ((1, "agent_continue"), (2, "agent_floor")):
            path = next(p for p in bench_pgbench.PATHS if p.key == key)
            params = {"user": f"00000000-0000-4000-8000-{account:012d}", "fund": bench_pgbench.FUND}
            with psycopg.connect(url) as conn:
                before = conn.execute(_TRACE, params).fetchone()
            bench_pgbench.run_transactions(url, path, account, account, 1)
            with psycopg.connect(url) as conn:
                after = conn.execute(_TRACE, params).fetchone()
            assert before is not None and after is not None
            assert before[0] == 0 and before[1] is None and before[2] is None
            assert after[3] == before[3], f"{key} wrote the conversation"
            traces[key] = after[:3]
    assert traces["agent_continue"] == traces["agent_floor"]
    assert traces["agent_floor"] == (1, ["reserve -1"], ["settled 1 1 done t t t"])

"""workshop.bench_agent_scale at a tiny size: the loaded history is legitimate (the row rules
accept every copy, the ledger audit stays empty), the table has its rows, and the agent
request reads no ledger row and a bounded number of exchange rows at every size. Never
asserts on speed."""

from __future__ import annotations

import os

import psycopg
import pytest

from workshop import bench_agent_scale
from workshop.bench_common import parse_tables


@pytest.mark.timeout(180)
def test_tiny_run_grows_the_history_and_reads_no_more_for_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin_url = os.environ["DATABASE_ADMIN_URL"]
    argv = ["--database-url", admin_url, "--sizes", "400,4000", "--accounts", "20",
            "--seconds", "1"]  # fmt: skip

    assert bench_agent_scale.main(argv) == 0

    out = capsys.readouterr().out
    (table,) = parse_tables(out)
    assert table[0] == bench_agent_scale.HEADERS
    rows = [[float(cell.replace(",", "")) for cell in row] for row in table[1:]]
    assert len(rows) == 2
    assert 400 <= rows[0][0] < 4000 <= rows[1][0]  # the history grew to each size
    assert all(row[1] >= row[0] for row in rows)  # a ledger row for every exchange
    read = {name: table[0].index(f"{name} rows read/request") for name in ("exchanges", "ledger")}
    for row in rows:
        assert row[read["ledger"]] == 0  # begin and settle never read the ledger
        # the settle's own row and a few re-reads under 16 clients on 20 accounts (2.5 to 3.0
        # seen, more while the rest of the suite runs beside it), never the history: 20 to
        # 200 exchanges an account here
        assert 0 < row[read["exchanges"]] < 5
    assert out.rstrip().endswith("ledger audit empty")
    with psycopg.connect(admin_url) as conn:
        left = conn.execute(
            "select datname from pg_database where datname = %s",
            [f"tokenbill_bench_agent_scale_{os.getpid()}"],
        ).fetchall()
    assert left == []  # its database was dropped

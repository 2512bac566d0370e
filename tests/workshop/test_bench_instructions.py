"""Smoke run of workshop.bench_instructions with a handful of calls: every statement of the
pgbench scripts becomes a prepared statement, each path's calls are counted by callgrind in a
single-user backend of a throwaway cluster, and the table has its rows and ratios. Never
asserts on how many instructions a path takes, only that they were counted, and that a
variant is counted from the same warmed copy (what it does not touch counts the same).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workshop import bench_instructions, procs, services
from workshop.bench_common import parse_tables
from workshop.bench_pgbench import PATHS, SCRIPTS

ROOT = Path(__file__).resolve().parents[2]

STATEMENTS = {"raw": 1, "one_statement": 1, "seed": 2, "wrapped": 1, "consume": 1,
              "agent_continue": 2, "agent": 2, "agent_floor": 2, "seed_agent": 4}  # fmt: skip


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.key)
def test_every_script_becomes_prepared_statements(path) -> None:
    sqls = bench_instructions.statements(SCRIPTS / f"{path.key}.sql")
    assert len(sqls) == STATEMENTS[path.key]
    for sql in sqls:
        assert "$1" in sql and ":n" not in sql and ":r" not in sql and "\n" not in sql
    text = bench_instructions.session_input(path, accounts=10, calls=3, seed=1)
    assert text.count("execute ") == 3 * len(sqls)
    assert text.startswith(f"set role {path.role};") == bool(path.role)


def test_every_count_starts_from_the_warmed_up_copy(tmp_path) -> None:
    """copy_cluster() puts the cluster back as copied: what a counted run wrote is gone, and
    the files keep their owner and mode (the cluster's user must still own them)."""
    pristine, data = tmp_path / "pristine", tmp_path / "data"
    (pristine / "base").mkdir(parents=True)
    (pristine / "base" / "1").write_text("warmed up")
    (pristine / "base" / "1").chmod(0o600)
    bench_instructions.copy_cluster(pristine, data)
    (data / "base" / "1").write_text("after a counted run")
    (data / "base" / "2").write_text("a new relation")
    bench_instructions.copy_cluster(pristine, data)
    assert sorted(p.name for p in (data / "base").iterdir()) == ["1"]
    copied = (data / "base" / "1").stat()
    assert (data / "base" / "1").read_text() == "warmed up"
    assert copied.st_mode & 0o777 == 0o600
    assert copied.st_uid == (pristine / "base" / "1").stat().st_uid


def test_counts_each_path_and_prints_the_ratios(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    variant = tmp_path / "checked_raw.sql"  # a CHECK costs every statement that writes the table
    variant.write_text(
        "alter table bench.raw_accounts add constraint raw_checked"
        " check (length(id::text) = 36 and tokens >= 0 and tokens < 2000000000)"
    )
    argv = ["--calls", "3", "--accounts", "20", "--warm", "20", "--paths", "consume",
            "--variant", str(variant)]  # fmt: skip
    assert bench_instructions.main(argv) == 0
    table, goals, variants = parse_tables(capsys.readouterr().out)
    labels = {p.key: p.label for p in PATHS}
    assert [row[0] for row in table[1:]] == [labels["raw"], labels["consume"]]
    for row in table[1:]:
        assert int(row[1].replace(",", "")) > 10_000, row  # a transaction, not an empty run
    assert table[1][2] == "1.00"
    assert [g[0] for g in goals[1:]] == []  # the paths of the goals were not all run

    assert variants[0] == ["state", "raw", "consume"]
    assert [row[0] for row in variants[1:]] == ["as migrated", "checked_raw.sql"]
    before, after = ([int(cell.split()[0].replace(",", "")) for cell in row[1:]]
                     for row in variants[1:])  # fmt: skip
    assert before == [int(row[1].replace(",", "")) for row in table[1:]]  # the same counts
    assert after[0] > before[0] + 5_000  # the variant ran on the copy that was counted
    assert abs(after[1] - before[1]) < before[1] * 0.01  # consume: one warmed state for both
    assert variants[2][1].endswith(" %)")


def test_a_variant_needs_a_file_and_a_name_of_its_own(tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "change.sql", tmp_path / "b" / "change.sql"
    for sql in (one, two):
        sql.parent.mkdir()
        sql.write_text("select 1")
    for argv in (["--variant", str(tmp_path / "missing.sql")],
                 ["--variant", str(one), "--variant", str(two)]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            bench_instructions.main(argv)
        assert exc.value.code == 2


def _valgrind_below(pid: int) -> dict[int, str]:
    """The valgrind processes under pid (one per count; not the runuser above it), with
    their command lines."""
    found = {}
    for child in procs.descendants(pid):
        cmdline = services._pid_cmdline(child)  # "" once it is gone
        if Path(cmdline.split(" ", 1)[0]).name in ("valgrind", "valgrind.bin"):
            found[child] = cmdline
    return found


@pytest.mark.timeout(240)
def test_a_killed_run_leaves_nothing_counting() -> None:
    """SIGTERM mid-count (a developer's kill, a CI timeout) stops the counting backend too,
    and the throwaway cluster's directory goes with it. Before, valgrind and its backend
    went on for minutes, re-parented to init, and their load skewed whatever ran next."""
    run = subprocess.Popen(
        [sys.executable, "-m", "workshop.bench_instructions", "--calls", "100000",
         "--accounts", "5", "--warm", "5", "--paths", "raw"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    seen: set[int] = set()
    counting: dict[int, str] = {}
    try:
        # the first count (the warm-up calls alone) is short; the second, of 100,050 calls,
        # runs for minutes: the signal lands in it
        deadline = time.monotonic() + 180
        while len(seen) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            counting = _valgrind_below(run.pid)
            seen |= set(counting)
        assert len(seen) >= 2 and counting, "the second callgrind run did not start"
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) != 0
        deadline = time.monotonic() + 10
        while any(services._pid_alive(pid) for pid in counting) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(services._pid_alive(pid) for pid in counting)
        out_file = re.search(r"--callgrind-out-file=(\S+)", next(iter(counting.values())))
        assert out_file and not Path(out_file.group(1)).parent.exists()
    finally:
        for pid in [run.pid, *counting]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait()

"""Instructions per call of each billing path, counted by callgrind: the same paths as
workshop/bench_pgbench.py (its pgbench scripts), side by side in one run.

    python -m workshop.bench_instructions [--calls 500] [--paths consume,seed]

Why a second instrument: pgbench's tps and CPU time move with whatever else the machine runs
(on a shared 2-core machine a quiet hour is rare); the instructions one backend executes for
a call do not. Each path's statements run as prepared statements in a single-user backend
(``postgres --single``) under ``valgrind --tool=callgrind``, one transaction per statement as
in pgbench, twice: with W calls and with W + N, each from the same copy of the warmed-up
cluster (a run's commits would otherwise leave the next run, and the next path, more dead
row versions to step over: one path cost 15 % more after another had run). The difference
over N is the cost of one call, without the backend's start, the plans' first compilation
or the warm-up. What it cannot see: the kernel's work (sockets, WAL writes, fsync), waits,
contention between clients, cache misses. Ratios are printed like bench_pgbench's, "× as
cheap": above 1 the first path costs fewer instructions.

``--variant FILE.sql`` (repeatable) judges a change before it is written as a migration: the
file runs as the owner on its own copy of the same warmed cluster, and every path is counted
there too, beside the copy as migrated. Both start from one state, so the difference is the
change's alone (counted on separately loaded clusters, the same code moved by up to 7,000
instructions an agent request: the rows' random ids lay the indexes out differently).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from webapp.ops import migrate
from workshop import services
from workshop.bench_common import connect_owner, format_table, progress
from workshop.bench_pgbench import (
    GOALS,
    PATHS,
    SCRIPTS,
    BenchPath,
    load,
    run_transactions,
)
from workshop.net import free_port

DATABASE = "tokenbill_instructions"
WARM_CALLS = 50  # calls before the counted ones: plans compiled, caches filled
_COLLECTED = re.compile(r"Collected : (\d+)")
_VARIABLE = {":n": "$1", ":r": "$2"}  # the scripts' \set variables, as prepared-statement params


def statements(script: Path) -> list[str]:
    """The SQL statements of a pgbench script, one line each, with :n and :r as $1 and $2."""
    lines = [
        line
        for line in script.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("--", "\\"))
    ]
    text = re.sub(r":[nr]\b", lambda m: _VARIABLE[m.group(0)], " ".join(lines))
    return [" ".join(part.split()) for part in text.split(";") if part.strip()]


def session_input(path: BenchPath, accounts: int, calls: int, seed: int) -> str:
    """What the single-user backend reads: the role, the prepared statements, then ``calls``
    calls of the path (every statement once, its own transaction), on random accounts."""
    rnd = random.Random(seed)
    sqls = statements(SCRIPTS / f"{path.key}.sql")
    out = [f"set role {path.role};"] if path.role else []
    out += [f"prepare s{i}(int, bigint) as {sql};" for i, sql in enumerate(sqls)]
    for _ in range(calls):
        account, request = rnd.randint(1, accounts), rnd.randint(1, 9 * 10**18)
        out += [f"execute s{i}({account}, {request});" for i in range(len(sqls))]
    return "\n".join(out) + "\n"


def count(data: Path, text: str, work: Path) -> int:
    """Instructions callgrind counted for one backend reading ``text``; a statement's ERROR
    fails the run (a path that errors would look cheap)."""
    stdin, out = work / "input.sql", work / "callgrind.out"
    stdin.write_text(text)
    stdin.chmod(0o644)
    work.chmod(0o777)  # the backend runs as the cluster's user and writes callgrind.out
    callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    with stdin.open() as source:
        # its own process group (runuser, valgrind, the backend), killed whole if we are
        # stopped mid-count: a run is minutes long, and an orphan would go on counting
        backend = subprocess.Popen(
            services.single_user_command(data, DATABASE, callgrind),
            stdin=source,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = backend.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.killpg(backend.pid, signal.SIGKILL)
            backend.wait()
            raise
    found = _COLLECTED.search(stderr)
    if backend.returncode != 0 or not found or "ERROR:" in stdout:
        errors = [line for line in stdout.splitlines() if "ERROR" in line][:3]
        why = errors or stderr[-500:]
        raise SystemExit(f"callgrind run failed (exit {backend.returncode}): {why}")
    return int(found.group(1))


def copy_cluster(source: Path, target: Path) -> None:
    """``target`` made a copy of the stopped cluster in ``source``, whatever it held before
    (owner and modes kept: the cluster's user must still own it)."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def per_call(
    data: Path, pristine: Path, path: BenchPath, accounts: int, calls: int, work: Path
) -> float:
    """Instructions of one call: (W + N calls) − (W calls), over N, both from ``pristine``."""
    copy_cluster(pristine, data)
    warm = count(data, session_input(path, accounts, WARM_CALLS, seed=1), work)
    copy_cluster(pristine, data)
    full = count(data, session_input(path, accounts, WARM_CALLS + calls, seed=2), work)
    return (full - warm) / calls


def warm_up(url: str, paths: Sequence[BenchPath], accounts: int, calls: int) -> None:
    """Run every path a while on the live server, then ANALYZE: the single-user backend has
    no autovacuum, and plans made on statistics of empty tables would scan them whole."""
    for path in paths:
        run_transactions(url, path, 1, accounts, calls)
    with connect_owner(url) as conn:
        conn.execute("vacuum (analyze)")


AS_MIGRATED = "as migrated"


def apply_variant(data: Path, sql: Path) -> None:
    """Run ``sql`` as the owner on the stopped cluster in ``data``, and stop it again."""
    admin_url = services.ensure_postgres(data, free_port())
    try:
        with connect_owner(services.ensure_database(admin_url, DATABASE)) as conn:
            conn.execute(sql.read_text())
    finally:
        services.stop_postgres(data)


def measure(
    paths: Sequence[BenchPath],
    accounts: int,
    calls: int,
    warm: int,
    variants: Sequence[Path] = (),
) -> dict[str, dict[str, float]]:
    """Instructions a call of each path, per state: the warmed copy as migrated, then the same
    copy with each variant file applied (keyed by the file's name)."""
    base = Path(tempfile.mkdtemp(prefix="tokenbill-instructions-"))
    base.chmod(0o755)  # the cluster's user must reach its data directory
    data, pristine = base / "postgres", base / "pristine"
    try:
        admin_url = services.ensure_postgres(data, free_port())
        url = services.ensure_database(admin_url, DATABASE)
        migrate.upgrade(url)
        progress(f"loading {accounts:,} accounts")
        load(url, accounts)
        warm_up(url, paths, accounts, warm)
        services.stop_postgres(data)
        copy_cluster(data, pristine)
        states = {AS_MIGRATED: pristine}
        for number, sql in enumerate(variants):
            states[sql.name] = base / f"variant-{number}"
            copy_cluster(pristine, states[sql.name])
            apply_variant(states[sql.name], sql)
        results: dict[str, dict[str, float]] = {}
        for state, copy in states.items():
            results[state] = {}
            for path in paths:
                results[state][path.key] = per_call(data, copy, path, accounts, calls, base)
                progress(f"{state}: {path.label}: {results[state][path.key]:,.0f} a call")
        return results
    finally:
        services.stop_postgres(data)
        shutil.rmtree(base, ignore_errors=True)


def report(results: dict[str, float]) -> str:
    labels = {p.key: p.label for p in PATHS}
    raw = results.get("raw")
    rows = [
        [labels[key], f"{value:,.0f}", f"{raw / value:.2f}" if raw else "-"]
        for key, value in results.items()
    ]
    table = format_table(["path", "instructions a call", "×raw (as cheap)"], rows)
    goal_rows = [
        [what, f"{results[den] / results[num]:.2f}", "-" if spread is None else f"≥ {spread}"]
        for num, den, what, _hot, spread in GOALS
        if num in results and den in results
    ]
    goals = format_table(["ratio (same run)", "as cheap", "tps target"], goal_rows)
    return f"{table}\n\n{goals}"


def report_variants(results: dict[str, dict[str, float]]) -> str:
    """A row per state (as migrated, then each variant), a column per path (by its key): the
    instructions a call, and under a variant the change from as migrated in per cent."""
    before = results[AS_MIGRATED]
    rows = []
    for state, counts in results.items():
        row = [state]
        for key, value in counts.items():
            change = (value - before[key]) / before[key] * 100
            row.append(
                f"{value:,.0f}" if state == AS_MIGRATED else f"{value:,.0f} ({change:+.1f} %)"
            )
        rows.append(row)
    return format_table(["state", *before], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workshop.bench_instructions")
    parser.add_argument("--calls", type=int, default=500, help="counted calls per path")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--paths", help="comma-separated path keys (default: all)")
    parser.add_argument(
        "--warm", type=int, default=300, help="pgbench calls per path before ANALYZE"
    )
    parser.add_argument(
        "--variant",
        type=Path,
        action="append",
        default=[],
        help="an SQL file run as the owner on its own copy of the warmed cluster (repeatable)",
    )
    args = parser.parse_args(argv)
    for sql in args.variant:
        if not sql.is_file():
            parser.error(f"no such file: {sql}")
    if len({sql.name for sql in args.variant}) < len(args.variant):
        parser.error("each --variant needs a file name of its own (it names its row)")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    wanted = set(args.paths.split(",")) if args.paths else {p.key for p in PATHS}
    paths = [p for p in PATHS if p.key in wanted or p.key == "raw"]
    results = measure(paths, args.accounts, args.calls, args.warm, args.variant)
    print(
        f"callgrind, one single-user backend, {args.calls} calls a path after {WARM_CALLS}, "
        f"{args.accounts:,} accounts\n"
    )
    print(report(results[AS_MIGRATED]))
    if args.variant:
        print(f"\n{report_variants(results)}")
    return 0


def _stop(signum: int, _frame: object) -> None:
    """SIGTERM as an exception, so a killed run cleans up as Ctrl-C does: the counting
    backend's process group, the throwaway cluster, its directory."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main())

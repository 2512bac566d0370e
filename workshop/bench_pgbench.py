"""The billing hot path at the database's limit: every path under pgbench, side by side.

Why pgbench: it is a C client, so on a 2-core machine it leaves the cores to the server; a
Python thread load runner eats the same cores and measures itself. Only ratios measured in the
same run mean anything here (the machine is shared), so every path runs in every round, rounds
alternate the order, and the table gives each path's tps next to the bare UPDATE's.

Paths (the pgbench scripts are in workshop/pgbench/, one file each):

- ``raw``: a conditional UPDATE on a bare table, no ledger (the ceiling);
- ``one_statement``: conditional UPDATE of tokenbill.users + INSERT into tokenbill.ledger;
- ``seed``: the seed's reference path (read the balance, then its plpgsql
  deduct_token_if_sufficient), copied into the scratch schema ``bench``;
- ``wrapped``: the one statement inside the least function the rules allow (plpgsql,
  SECURITY DEFINER, search_path pinned; no idempotency, input rule or threshold): the floor
  under any charging api function, in the scratch schema (so not on a ``--before`` database);
- ``consume``: api.consume;
- ``agent_continue``: one agent request's DB work as webapp/metering.py does it, acting as
  tokenbill_app: api.begin_agent_request then api.settle_agent_request, continuing the
  account's conversation (the loader makes one per account, like the seed's session) — the
  like-for-like comparison with ``seed_agent``;
- ``agent``: the same, starting a new conversation on every request;
- ``agent_floor``: the four rows an agent request continuing a conversation must write
  (balance, exchange with its hold, ledger 'reserve'; then the reply and the closed hold) as
  two plain statements run as the owner: the floor under any function doing that request on
  these tables, as ``one_statement`` is for a charge;
- ``seed_agent``: the seed's whole agent request (its billing + one INSERT per message).

Each runs on one hot account and spread over N accounts (1,000 by default). With
``--before 0016`` a second database migrated only up to that migration runs the ledger paths
too, so a migration's effect is measured before/after in one run. Afterwards api.ledger_audit()
must be empty; the exit status is 1 when it is not or when any transaction failed.

CLI::

    python -m workshop.bench_pgbench [--quick] [--before 0016] [--database-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from webapp.db import APP_ROLE
from webapp.ops import migrate
from workshop.bench_common import (
    bench_database,
    connect_owner,
    create_admin,
    format_table,
    ledger_audit,
    progress,
    resolve_admin_url,
)

SCRIPTS = Path(__file__).resolve().parent / "pgbench"
FUND = 1_000_000_000  # tokens per account: no path ever runs out during a run
HOT_ID = 0  # account numbers: 0 is the hot account, 1..N the spread ones


@dataclass(frozen=True)
class BenchPath:
    key: str
    label: str
    role: str | None = None  # acts as this role for the whole session, like the app's pool
    ledger: bool = True  # runs against the tokenbill schema (so also on a --before database)
    since: str = "0001"  # the first migration whose schema it needs (a --before older skips it)


PATHS = [
    BenchPath("raw", "raw conditional UPDATE on a bare table, no ledger", ledger=False),
    BenchPath("one_statement", "one statement: UPDATE tokenbill.users + INSERT tokenbill.ledger"),
    BenchPath("seed", "the seed's reference path (SELECT, then its plpgsql function)",
              ledger=False),
    BenchPath("wrapped", "the one statement in a plpgsql SECURITY DEFINER function",
              ledger=False),
    BenchPath("consume", "api.consume"),
    BenchPath("agent_continue", "agent request, existing conversation: begin + settle",
              APP_ROLE),
    BenchPath("agent", "agent request, new conversation: begin + settle", APP_ROLE),
    BenchPath("agent_floor", "the four writes of an agent request, two plain statements",
              since="0023"),
    BenchPath("seed_agent", "the seed's whole agent request (billing + 2 message inserts)",
              ledger=False),
]  # fmt: skip
GOALS = [
    # (numerator, denominator, what, hot target, spread target)
    ("consume", "seed", "api.consume / seed path", 1.1, 1.3),
    ("consume", "one_statement", "api.consume / one statement", 0.9, 0.9),
    # where consume's distance to the statement goes: being a function, then its guarantees
    ("wrapped", "one_statement", "a function's floor / one statement (no target)", None, None),
    ("consume", "wrapped", "api.consume / a function's floor (no target)", None, None),
    # like for like: both write into an existing conversation / session
    ("agent_continue", "seed_agent", "agent request / seed's whole agent request", None, 1.5),
    ("agent", "seed_agent", "agent request, new conversation / seed's (no target)", None, None),
    # where the agent request's distance to the seed goes: its writes, then the rest
    ("agent_floor", "seed_agent", "the four writes alone / seed's (no target)", None, None),
    ("agent_continue", "agent_floor", "agent request / its four writes (no target)", None, None),
]
TABLE_HEADERS = ["path", "hot tps", "×raw", "spread tps", "×raw", "runs", "failed",
                 "hot µs cpu/tx", "spread µs cpu/tx"]  # fmt: skip
GOAL_HEADERS = ["ratio (same run)", "hot", "target", "spread", "target", "hot by cpu",
                "spread by cpu"]  # fmt: skip


@dataclass
class Settings:
    accounts: int
    seconds: int
    rounds: int
    clients: int
    threads: int


FULL = Settings(accounts=1000, seconds=8, rounds=2, clients=16, threads=2)
QUICK = Settings(accounts=1000, seconds=3, rounds=1, clients=16, threads=2)


@dataclass
class Result:
    """Every pgbench run of one path in one scenario."""

    tps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per transaction
    failed: int = 0
    runs: int = 0

    @property
    def mean(self) -> float:
        return sum(self.tps) / len(self.tps) if self.tps else float("nan")

    @property
    def cpu(self) -> float:
        return sum(self.cpu_us) / len(self.cpu_us) if self.cpu_us else float("nan")


@dataclass(frozen=True)
class Run:
    """One pgbench run."""

    tps: float
    failed: int
    transactions: int


class ServerCpu:
    """CPU seconds the server's ended processes used: the postmaster's cutime + cstime.

    Why: tps on a shared 2-core machine moves with whatever else runs; the CPU a transaction
    costs the server moves much less. pgbench's connections end with each run, so the
    postmaster has reaped their backends (and any autovacuum worker that finished) by the
    time the run returns: the difference around a run, divided by its transactions, is the
    server CPU per transaction. Unavailable (None) when the server is not on this machine.
    """

    def __init__(self, url: str) -> None:
        self.postmaster: int | None = None
        with connect_owner(url) as conn:  # its backend's parent, read while it is alive
            row = conn.execute("select pg_backend_pid()").fetchone()
            with contextlib.suppress(OSError, ValueError, IndexError, TypeError):
                self.postmaster = int(self._stat(int(row[0]))[1])  # type: ignore[index]

    @staticmethod
    def _stat(pid: int) -> list[str]:
        """/proc/PID/stat's fields after the command name (field 3 first)."""
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    def seconds(self, database: str) -> float | None:
        """The total once no backend of ``database`` is left and every ended one is reaped
        (pgbench returns when its sockets close, a moment before its backends are gone)."""
        if self.postmaster is None:
            return None
        deadline = time.monotonic() + 5
        while self._pending(database) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            fields = self._stat(self.postmaster)
        except OSError:
            return None
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

    def _pending(self, database: str) -> bool:
        """A backend of ``database`` still runs, or an ended child is not reaped yet (a
        process on its way out has an empty command line before it is a zombie)."""
        pm = self.postmaster
        try:
            children = Path(f"/proc/{pm}/task/{pm}/children").read_text().split()
        except OSError:
            return False
        for child in children:
            with contextlib.suppress(OSError, IndexError):
                if self._stat(int(child))[0] == "Z":
                    return True
                title = Path(f"/proc/{child}/cmdline").read_bytes()
                if not title.strip(b"\0 ") or f" {database} ".encode() in title:
                    return True
        return False


def pgbench_binary() -> str:
    """Debian's pgbench (the server's major version), else one on PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    if candidates:
        return str(candidates[-1])
    found = shutil.which("pgbench")
    if not found:
        raise SystemExit("pgbench not found: apt-get install postgresql (it ships pgbench)")
    return found


# ============================================================================================
# Loading
# ============================================================================================
def load(url: str, accounts: int) -> None:
    """The scratch schema, account 0 (hot) and 1..accounts, funded alike on every path's table.

    Accounts are real tokenbill users with predictable ids (the pgbench scripts derive the id
    from the account number), funded through api.admin_adjust so the ledger agrees.
    """
    uid = "('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid"
    with connect_owner(url) as conn:
        conn.execute((SCRIPTS / "scratch_schema.sql").read_text())  # type: ignore[arg-type]
        conn.execute(
            f"insert into tokenbill.users (id, email, password_hash)"  # type: ignore[arg-type]
            f" select {uid}, 'pgbench-' || g || '@example.test', 'bench-not-a-password-hash'"
            f" from generate_series(0, %s) g",
            [accounts],
        )
        admin = create_admin(conn)
        conn.execute(
            "select api.admin_adjust(%s, u.id, %s, 'benchmark funding') from tokenbill.users u"
            " where u.email like 'pgbench-%%'",
            [admin, FUND],
        )
        for statement in (
            f"insert into bench.raw_accounts select {uid}, %s from generate_series(0, %s) g",
            f"insert into bench.user_profiles (id, tokens) select {uid}, %s"
            f" from generate_series(0, %s) g",
        ):
            conn.execute(statement, [FUND, accounts])  # type: ignore[arg-type]
        conn.execute(
            f"insert into bench.conversations (session_id, user_id)"  # type: ignore[arg-type]
            f" select {uid}::text || '~bench', {uid} from generate_series(0, %s) g",
            [accounts],
        )
        conn.execute(
            f"insert into tokenbill.conversations (id, user_id, title)"  # type: ignore[arg-type]
            f" select {uid}, {uid}, 'pgbench conversation' from generate_series(0, %s) g",
            [accounts],
        )
        conn.execute("vacuum (analyze)")
        conn.execute("checkpoint")


@contextlib.contextmanager
def migrations_up_to(last: str) -> Iterator[Path]:
    """A folder holding the migrations numbered up to ``last`` (for a before/after run)."""
    with tempfile.TemporaryDirectory(prefix="tokenbill-migrations-") as folder:
        for source in sorted(migrate.MIGRATIONS_DIR.glob("*.sql")):
            if source.name[:4] <= last:
                shutil.copy(source, folder)
        yield Path(folder)


# ============================================================================================
# Running
# ============================================================================================
_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def pgbench_env(path: BenchPath) -> dict[str, str]:
    """pgbench's environment: the path's role for the whole session, like the app's pool."""
    env = dict(os.environ)
    if path.role:
        env["PGOPTIONS"] = f"-c role={path.role}"
    return env


def pgbench_command(url: str, path: BenchPath, first: int, last: int, *load: str) -> list[str]:
    """pgbench running the path's script as prepared statements on accounts first..last;
    ``load`` says how much (``-t N``, or clients, threads and seconds)."""
    return [
        pgbench_binary(), "-n", "-M", "prepared", *load,
        "-D", f"first={first}", "-D", f"last={last}",
        "-f", str(SCRIPTS / f"{path.key}.sql"),
        url,
    ]  # fmt: skip


def run_transactions(url: str, path: BenchPath, first: int, last: int, transactions: int) -> None:
    """``transactions`` calls of the path from one client, any failure raised (a warm-up, a
    check of what one call writes)."""
    command = pgbench_command(url, path, first, last, "-t", str(transactions))
    subprocess.run(command, env=pgbench_env(path), capture_output=True, check=True)


def run_pgbench(url: str, path: BenchPath, first: int, last: int, settings: Settings) -> Run:
    """One pgbench run (tps, failed and processed transactions); an aborted run counts as
    failed."""
    command = pgbench_command(
        url, path, first, last,
        "-c", str(settings.clients), "-j", str(settings.threads), "-T", str(settings.seconds),
    )  # fmt: skip
    env = pgbench_env(path)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    out = done.stdout
    tps, failed = _TPS.search(out), _FAILED.search(out)
    processed = _PROCESSED.search(out)
    if done.returncode != 0 or not tps or not processed:
        progress(f"pgbench {path.key} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return Run(0.0, max(1, int(failed.group(1)) if failed else 1), 0)
    return Run(float(tps.group(1)), int(failed.group(1)) if failed else 0,
               int(processed.group(1)))  # fmt: skip


# Every table a path UPDATEs. A run leaves dead row versions behind (16 clients on one hot
# row make thousands a second): how many depends on which paths ran before it, and a page
# full of them turns the next run's HOT updates into index-writing ones. Vacuumed before every
# run, each path starts from the same state whatever the order.
UPDATED_TABLES = (
    "tokenbill.users", "tokenbill.exchanges", "tokenbill.conversations",
    "tokenbill.agent_holds", "tokenbill.messages",  # before 0023
    "bench.raw_accounts", "bench.user_profiles",
)  # fmt: skip


def vacuum_updated_tables(url: str) -> None:
    with connect_owner(url) as conn:
        present = [
            name
            for name in UPDATED_TABLES
            if conn.execute("select to_regclass(%s)", [name]).fetchone()[0]  # type: ignore[index]
        ]
        conn.execute(f"vacuum {', '.join(present)}")  # type: ignore[arg-type]


def measure(
    targets: Sequence[tuple[str, str, BenchPath]], settings: Settings
) -> dict[tuple[str, str], Result]:
    """Run every (label, url, path) in both scenarios, every round, alternating the order."""
    scenarios = [("hot", HOT_ID, HOT_ID), ("spread", 1, settings.accounts)]
    results: dict[tuple[str, str], Result] = {}
    cpu = {url: ServerCpu(url) for _, url, _ in targets}
    for round_no in range(settings.rounds):
        order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
        for scenario, first, last in scenarios:
            for label, url, path in order:
                vacuum_updated_tables(url)
                database = str(conninfo_to_dict(url).get("dbname"))
                before = cpu[url].seconds(database)
                run = run_pgbench(url, path, first, last, settings)
                after = cpu[url].seconds(database)
                result = results.setdefault((label, scenario), Result())
                result.runs += 1
                result.failed += run.failed
                if run.tps:
                    result.tps.append(run.tps)
                used = ""
                if run.transactions and before is not None and after is not None:
                    result.cpu_us.append((after - before) / run.transactions * 1e6)
                    used = f", {result.cpu_us[-1]:,.0f} µs server CPU/tx"
                progress(f"round {round_no + 1} {scenario:6} {label}: {run.tps:,.0f} tps{used}")
    return results


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _whole(value: float) -> int | str:
    return "-" if math.isnan(value) else round(value)


def report(
    results: dict[tuple[str, str], Result], labels: Sequence[str], raw_label: str
) -> tuple[str, str]:
    """The main table (tps and ×raw per scenario) and the goal ratios."""
    raw = {s: results[(raw_label, s)].mean for s in ("hot", "spread")}
    rows = []
    for label in labels:
        hot, spread = results[(label, "hot")], results[(label, "spread")]
        rows.append([
            label, _whole(hot.mean), ratio(hot.mean, raw["hot"]),
            _whole(spread.mean), ratio(spread.mean, raw["spread"]),
            hot.runs + spread.runs, hot.failed + spread.failed, _whole(hot.cpu), _whole(spread.cpu),
        ])  # fmt: skip
    by_key = {p.key: p.label for p in PATHS}
    goals = []
    for num, den, what, hot_target, spread_target in GOALS:
        if (by_key[num], "hot") not in results or (by_key[den], "hot") not in results:
            continue  # --paths left one of them out
        values = [
            ratio(results[(by_key[num], s)].mean, results[(by_key[den], s)].mean)
            for s in ("hot", "spread")
        ]
        # by CPU: the denominator's CPU per transaction over the numerator's (higher = better)
        by_cpu = [
            ratio(results[(by_key[den], s)].cpu, results[(by_key[num], s)].cpu)
            for s in ("hot", "spread")
        ]
        goals.append([
            what, values[0], f"≥ {hot_target}" if hot_target else "-",
            values[1], f"≥ {spread_target}" if spread_target else "-", by_cpu[0], by_cpu[1],
        ])  # fmt: skip
    return format_table(TABLE_HEADERS, rows), format_table(GOAL_HEADERS, goals)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a superuser URL (default: DATABASE_ADMIN_URL)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per run")
    parser.add_argument("--accounts", type=int, help="spread accounts (default 1000)")
    parser.add_argument("--seconds", type=int, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, help="rounds (each runs every path once)")
    parser.add_argument("--clients", type=int, help="pgbench -c (default 16)")
    parser.add_argument("--threads", type=int, help="pgbench -j (default 2)")
    parser.add_argument("--paths", help="comma-separated path keys (default: all)")
    parser.add_argument(
        "--before", metavar="NNNN", help="also run the ledger paths on a database migrated "
        "only up to migration NNNN (a before/after comparison in the same run)",
    )  # fmt: skip
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = Settings(
        accounts=args.accounts or base.accounts,
        seconds=args.seconds or base.seconds,
        rounds=args.rounds or base.rounds,
        clients=args.clients or base.clients,
        threads=args.threads or base.threads,
    )
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = parse_args(argv)
    admin_url = resolve_admin_url(args.database_url)
    wanted = set(args.paths.split(",")) if args.paths else {p.key for p in PATHS}
    paths = [p for p in PATHS if p.key in wanted or p.key == "raw"]
    name = f"tokenbill_pgbench_{os.getpid()}"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(bench_database(admin_url, name, keep=args.keep_database))
        progress(f"loading 1 hot + {settings.accounts:,} accounts into {name}")
        load(url, settings.accounts)
        targets = [(p.label, url, p) for p in paths]
        urls = [url]
        if args.before:
            folder = stack.enter_context(migrations_up_to(args.before))
            before_db = bench_database(
                admin_url, f"{name}_before", keep=args.keep_database, directory=folder
            )
            before_url = stack.enter_context(before_db)
            load(before_url, settings.accounts)
            urls.append(before_url)
            targets += [
                (f"{p.label} (at {args.before})", before_url, p)
                for p in paths
                if p.ledger and args.before >= p.since
            ]
        results = measure(targets, settings)
        audits = []
        for each in urls:
            with connect_owner(each) as conn:
                rows, _ = ledger_audit(conn)
                audits.append(len(rows))
    table, goals = report(results, [t[0] for t in targets], PATHS[0].label)
    dsn = conninfo_to_dict(url)
    print(
        f"pgbench -M prepared -c {settings.clients} -j {settings.threads} -T {settings.seconds}, "
        f"{settings.rounds} round(s), 1 hot account and {settings.accounts:,} spread accounts, "
        f"server {dsn.get('host')}:{dsn.get('port')}\n"
    )
    print(table)
    print()
    print(goals)
    print()
    print(f"ledger audit: {sum(audits)} rows")
    failed = sum(r.failed for r in results.values())
    return 1 if failed or sum(audits) else 0


if __name__ == "__main__":
    sys.exit(main())

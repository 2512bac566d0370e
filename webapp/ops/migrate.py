"""Apply the SQL migrations under db/migrations, once each, strictly in version order.

Each applied file is recorded with its SHA-256 in ``public.tokenbill_migrations``. Running again
applies only new files; an applied file whose contents changed is an error (write a new
migration instead), and so is a pending file numbered below the highest applied one (it was
written against an older schema than the database has: renumber it above the newest). A
session-level advisory lock makes concurrent runs wait for each other, and a second one, in the
cluster's maintenance database, makes migrations of other databases of the same cluster wait
too (roles belong to the cluster: see _cluster_lock). The migrations table
itself is readable and writable by its owner only.

A migration waits at most ``lock_timeout_seconds`` (10 s; ``--lock-timeout``) for a table lock.
ALTER TABLE queues for its ACCESS EXCLUSIVE lock behind any open transaction on the table, and
every charge that arrives meanwhile queues behind the ALTER: a report left open would stop
billing for as long as it runs. Past the limit the migration gives up (so the writers wait at
most that long), nothing of it applied, and says so; run it again once that transaction ends.

Usage: ``flask --app webapp migrate [--database-url URL] [--status] [--lock-timeout S]``; the
URL defaults to ``MIGRATION_DATABASE_URL``, then ``DATABASE_URL``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
from flask.cli import with_appcontext
from psycopg.conninfo import make_conninfo

from .connection import operator_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations"
LOCK_KEY = 7_236_511_042  # any constant shared by every migrator of this database
CLUSTER_LOCK_KEY = 7_236_511_043  # the same, in the maintenance database, for the cluster's roles
LOCK_TIMEOUT_SECONDS = 10.0  # the longest a migration may keep the writers queued behind it

# The record of what ran is the owner's alone. Hosts that hand new tables in schema public to
# API roles by default privileges (Supabase: anon, authenticated, service_role) would otherwise
# let a public API key rewrite it.
REVOKE_FROM_OTHERS = """
do $$
declare
    v_grantee text;
begin
    revoke all on public.tokenbill_migrations from public;
    for v_grantee in
        select distinct a.grantee::regrole::text
          from pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         where c.oid = 'public.tokenbill_migrations'::regclass
           and a.grantee not in (0, c.relowner)
    loop
        execute format('revoke all on public.tokenbill_migrations from %s', v_grantee);
    end loop;
end
$$
"""

log = logging.getLogger("tokenbill.migrate")


class MigrationError(RuntimeError):
    """The database and the migration files disagree; a person must look."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read ``NNNN_name.sql`` files in order; refuse duplicate version numbers."""
    migrations: list[Migration] = []
    seen: set[str] = set()
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if not version.isdigit() or not name:
            raise MigrationError(f"{path.name}: expected NNNN_name.sql")
        if version in seen:
            raise MigrationError(f"{path.name}: version {version} used twice")
        seen.add(version)
        migrations.append(Migration(version, name, path.read_text(encoding="utf-8")))
    return migrations


def _refuse_out_of_order(migrations: list[Migration], applied: dict[str, str]) -> None:
    """Refuse before applying anything when a pending file sorts below an applied one."""
    newest = max(applied, default="")
    late = [m for m in migrations if m.version not in applied and m.version < newest]
    if late:
        names = ", ".join(f"{m.version}_{m.name}" for m in late)
        raise MigrationError(
            f"{names} is pending but the database already has {newest}: migrations apply "
            f"strictly in order; renumber it above {newest}"
        )


@contextlib.contextmanager
def _cluster_lock(database_url: str) -> Iterator[None]:
    """Migrations of other databases of the same cluster wait for this one, and it for them.

    Roles are the cluster's, not a database's: two databases migrating at once (the test
    suite's workers on a new cluster, staging and production on one server) both create and
    grant tokenbill_app, tokenbill_sweeper, ..., and one failed on the other's uncommitted role
    (a duplicate key in pg_authid, or 'role does not exist'). An advisory lock is per database,
    so this one is taken in the cluster's maintenance database, ``postgres``; a role that may
    not connect there (a hosted database) migrates with the per-database lock alone.
    """
    try:
        conn = psycopg.connect(
            make_conninfo(database_url, dbname="postgres"), autocommit=True, connect_timeout=5
        )
    except psycopg.Error:
        yield
        return
    with conn:
        conn.execute("select pg_advisory_lock(%s)", [CLUSTER_LOCK_KEY])
        yield


def upgrade(
    database_url: str,
    directory: Path = MIGRATIONS_DIR,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
) -> list[str]:
    """Apply pending migrations; return the versions applied (empty when up to date)."""
    applied_now: list[str] = []
    with _cluster_lock(database_url), psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", [LOCK_KEY])
        try:
            conn.execute(
                """
                create table if not exists public.tokenbill_migrations (
                    version text primary key,
                    name text not null,
                    checksum text not null,
                    applied_at timestamptz not null default now())
                """
            )
            conn.execute(REVOKE_FROM_OTHERS)
            applied = dict(
                conn.execute("select version, checksum from public.tokenbill_migrations").fetchall()
            )
            migrations = discover(directory)
            _refuse_out_of_order(migrations, applied)
            for migration in migrations:
                recorded = applied.get(migration.version)
                if recorded is not None:
                    if recorded != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version}_{migration.name} was changed after "
                            "it was applied; add a new migration instead"
                        )
                    continue
                try:
                    with conn.transaction():
                        # set here, not for the session: the advisory lock above may wait longer
                        conn.execute(
                            "select set_config('lock_timeout', %s, true)",
                            [f"{round(lock_timeout_seconds * 1000)}ms"],
                        )
                        conn.execute(migration.sql)  # type: ignore[arg-type]  # trusted file
                        conn.execute(
                            "insert into public.tokenbill_migrations (version, name, checksum)"
                            " values (%s, %s, %s)",
                            [migration.version, migration.name, migration.checksum],
                        )
                except psycopg.errors.LockNotAvailable as exc:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} waited "
                        f"{lock_timeout_seconds:g} s for a lock another transaction holds "
                        "(it would have queued the writers behind it); nothing of it was "
                        "applied: run migrate again when that transaction has ended"
                    ) from exc
                log.info("applied %s_%s", migration.version, migration.name)
                applied_now.append(migration.version)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", [LOCK_KEY])
    return applied_now


def status(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[tuple[str, str]]:
    """List each migration file with 'applied', 'pending' or 'CHANGED'."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("select to_regclass('public.tokenbill_migrations')").fetchone()
        rows = (
            conn.execute("select version, checksum from public.tokenbill_migrations").fetchall()
            if exists and exists[0]
            else []
        )
    applied = dict(rows)
    result = []
    for m in discover(directory):
        state = "pending" if m.version not in applied else "applied"
        if state == "applied" and applied[m.version] != m.checksum:
            state = "CHANGED"
        result.append((f"{m.version}_{m.name}", state))
    return result


@click.command("migrate")
@click.option("--database-url", help="Defaults to MIGRATION_DATABASE_URL, then DATABASE_URL.")
@click.option("--status", "show_status", is_flag=True, help="Show what is applied and stop.")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0.1),
    default=LOCK_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds a migration may wait for a table lock before it gives up.",
)
@with_appcontext
def command(database_url: str | None, show_status: bool, lock_timeout: float) -> None:
    """Apply the pending migrations under db/migrations, strictly in order."""
    url = database_url or operator_url()
    if not url:
        raise click.ClickException(
            "set DATABASE_URL (or MIGRATION_DATABASE_URL) or pass --database-url"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if show_status:
        for name, state in status(url):
            click.echo(f"{state:8} {name}")
        return
    try:
        applied = upgrade(url, lock_timeout_seconds=lock_timeout)
    except MigrationError as exc:
        raise click.ClickException(f"migration error: {exc}") from None
    click.echo(f"applied {len(applied)} migration(s)" if applied else "database is up to date")

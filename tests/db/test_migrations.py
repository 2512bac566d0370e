"""webapp/ops/migrate.py: applies everything once, records checksums, refuses edited files."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from webapp.ops import migrate
from workshop import procs


def test_apply_on_empty_database_then_no_op(empty_db):
    files = migrate.discover()
    assert migrate.upgrade(empty_db) == [m.version for m in files]
    assert migrate.upgrade(empty_db) == []
    assert {state for _, state in migrate.status(empty_db)} == {"applied"}
    with psycopg.connect(empty_db) as conn:
        recorded = conn.execute(
            "select version, checksum from public.tokenbill_migrations order by version"
        ).fetchall()
    assert recorded == [(m.version, m.checksum) for m in files]


def test_changed_applied_file_is_an_error(empty_db, tmp_path: Path):
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy)
    migrate.upgrade(empty_db, copy)
    first = sorted(copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
        migrate.upgrade(empty_db, copy)
    assert ("0001_roles_and_schemas", "CHANGED") in migrate.status(empty_db, copy)


def test_a_failing_migration_leaves_nothing_half_applied(empty_db, tmp_path: Path):
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy)
    (copy / "9999_broken.sql").write_text("create table public.half (id int);\nselect 1/0;\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate.upgrade(empty_db, copy)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("select to_regclass('public.half')").fetchone() == (None,)
        versions = [r[0] for r in conn.execute("select version from public.tokenbill_migrations")]
    assert "9999" not in versions and "0006" in versions


def test_concurrent_runs_apply_each_migration_once(empty_db):
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate.upgrade(empty_db))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, len(migrate.discover())]


def test_bad_file_names_are_refused(tmp_path: Path):
    (tmp_path / "init.sql").write_text("select 1;")
    with pytest.raises(migrate.MigrationError):
        migrate.discover(tmp_path)


def test_a_pending_file_below_the_newest_applied_is_refused(empty_db, tmp_path: Path):
    """0009 and 0010 landed before 0007 once: a database at 0010 must not get 0007 silently."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy)
    migrate.upgrade(empty_db, copy)
    (copy / "0008_late.sql").write_text("create table public.late (id int);\n")
    (copy / "9999_next.sql").write_text("create table public.next (id int);\n")
    with pytest.raises(migrate.MigrationError, match=r"0008_late is pending.*strictly in order"):
        migrate.upgrade(empty_db, copy)
    with psycopg.connect(empty_db) as conn:
        # refused before anything ran: not even the well-numbered 9999
        assert conn.execute(
            "select to_regclass('public.late'), to_regclass('public.next')"
        ).fetchone() == (None, None)
    assert ("0008_late", "pending") in migrate.status(empty_db, copy)


def test_a_migration_waiting_on_a_lock_gives_up_and_applies_nothing(empty_db, tmp_path: Path):
    """The adversary is an operator deploying while a report holds the ledger open: an ALTER
    queued for its lock would queue every charge behind it for as long as the report runs."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy)
    migrate.upgrade(empty_db, copy)
    (copy / "9999_alter_ledger.sql").write_text(
        "alter table tokenbill.ledger add column note text;\n"
    )
    errors: list[str] = []

    def deploy() -> None:
        try:
            migrate.upgrade(empty_db, copy, lock_timeout_seconds=0.3)
        except migrate.MigrationError as exc:
            errors.append(str(exc))

    with psycopg.connect(empty_db) as report:  # a transaction left open on the ledger
        report.execute("select count(*) from tokenbill.ledger").fetchone()
        runner = threading.Thread(target=deploy)
        runner.start()
        runner.join(5)
        kept_waiting = runner.is_alive()
    runner.join()  # the report has ended: a migration still waiting goes on now
    assert not kept_waiting, "the migration kept the ledger's writers queued behind it"
    assert errors and "9999_alter_ledger waited 0.3 s" in errors[0]
    with psycopg.connect(empty_db) as conn:
        versions = [r[0] for r in conn.execute("select version from public.tokenbill_migrations")]
        added = conn.execute(
            "select 1 from pg_attribute where attrelid = 'tokenbill.ledger'::regclass"
            " and attname = 'note'"
        ).fetchone()
    assert "9999" not in versions and added is None
    assert migrate.upgrade(empty_db, copy) == ["9999"]  # once the report has ended


@pytest.fixture
def fresh_cluster() -> Iterator[str]:
    """A cluster of its own, none of tokenbill's roles in it yet (the suite's has them all)."""
    with procs.private_postgres() as cluster:
        yield cluster.admin_url


def test_two_databases_of_a_fresh_cluster_migrate_at_once(fresh_cluster: str):
    """Roles belong to the cluster, not to a database: two databases migrating at the same time
    (the suite's two workers on its first run, staging and production on one server) both
    create and grant tokenbill_app, tokenbill_sweeper, ... The advisory lock of each database
    did not serialise them: one failed with 'role "tokenbill_sweeper" does not exist' (a CI
    run) or a duplicate key in pg_authid (this test, four databases, one run in three). A
    migration now waits for the cluster's lock first, shown here by holding it: nothing is
    applied until it is released, then all four databases migrate."""
    urls = []
    with psycopg.connect(fresh_cluster, autocommit=True) as conn:
        for name in ("tokenbill_a", "tokenbill_b", "tokenbill_c", "tokenbill_d"):
            conn.execute(f"create database {name}")
            urls.append(make_conninfo(fresh_cluster, dbname=name))
    start = threading.Barrier(len(urls))
    failures: list[BaseException] = []

    def run(url: str) -> None:
        start.wait()
        try:
            migrate.upgrade(url)
        except BaseException as exc:  # reported below, with the other threads'
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(url,)) for url in urls]
    with psycopg.connect(fresh_cluster, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", [migrate.CLUSTER_LOCK_KEY])
        for thread in threads:
            thread.start()
        threads[0].join(timeout=1.5)
        assert all(thread.is_alive() for thread in threads)  # all waiting for the cluster
        assert all(state == "pending" for url in urls for _, state in migrate.status(url))
    for thread in threads:
        thread.join()
    assert failures == []
    for url in urls:
        assert {state for _, state in migrate.status(url)} == {"applied"}

"""webapp.ops.db_logins: the logins scripts/run and compose hand to the app."""

from __future__ import annotations

import os
import shlex
import uuid

import click
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from webapp.ops import db_logins


def test_makes_noinherit_non_superuser_logins_and_prints_their_urls(app, admin_url, database_url):
    prefix = f"tb_t{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        result = run_db_logins(app, admin_url, database_url, prefix)
        assert result.exit_code == 0, result.output
        exports = dict(shlex.split(line)[1].split("=", 1) for line in result.output.splitlines())
        assert set(exports) == {
            "DATABASE_URL",
            "WEBHOOK_DATABASE_URL",
            "WORKER_DATABASE_URL",
            "AUTH_DATABASE_URL",
        }
        with psycopg.connect(admin_url) as conn:
            rows = conn.execute(
                "select u.rolname, u.rolsuper, u.rolinherit, u.rolcreaterole,"
                " array_agg(g.rolname::text order by g.rolname)"
                " from pg_roles u join pg_auth_members m on m.member = u.oid"
                " join pg_roles g on g.oid = m.roleid where u.rolname like %s group by 1, 2, 3, 4"
                " order by 1",
                [f"{prefix}%"],
            ).fetchall()
        assert rows == [
            # password hashes only (0031): the web login cannot read them
            (f"{prefix}_signin", False, False, False, ["tokenbill_auth"]),
            (f"{prefix}_stripe", False, False, False, ["tokenbill_webhook"]),
            (f"{prefix}_web", False, False, False, ["tokenbill_admin", "tokenbill_app"]),
            # the background loops: not the web app, no admin, no Stripe events
            (f"{prefix}_workers", False, False, False, ["tokenbill_notifier", "tokenbill_sweeper"]),
        ]
        with psycopg.connect(exports["WEBHOOK_DATABASE_URL"]) as conn:
            assert conn.execute("select current_user").fetchone() == (f"{prefix}_stripe",)
        with psycopg.connect(exports["WORKER_DATABASE_URL"]) as conn:
            assert conn.execute("select current_user").fetchone() == (f"{prefix}_workers",)
        with psycopg.connect(exports["AUTH_DATABASE_URL"]) as conn:
            assert conn.execute("select current_user").fetchone() == (f"{prefix}_signin",)
        # run again: same logins, memberships unchanged (idempotent)
        db_logins.ensure_login(admin_url, f"{prefix}_web", "pw-web", ["tokenbill_app"])
        assert groups_of(admin_url, f"{prefix}_web") == ["tokenbill_app"]  # unlisted: revoked
    finally:
        drop_logins(admin_url, prefix)


def run_db_logins(app, admin_url: str, database_url: str, prefix: str):
    """``flask db-logins`` for the four logins named ``prefix``_web/_stripe/_workers/_signin."""
    return app.test_cli_runner().invoke(
        args=[
            "db-logins",
            "--admin-url", admin_url,
            "--database-url", database_url,
            "--prefix", prefix,
            "--web-password", "pw-web",
            "--stripe-password", "pw-stripe",
            "--workers-password", "pw-workers",
            "--signin-password", "pw-signin",
        ]
    )  # fmt: skip


def groups_of(admin_url: str, login: str) -> list[str]:
    """The group roles ``login`` is a member of, by name."""
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(
            "select g.rolname from pg_auth_members m join pg_roles g on g.oid = m.roleid"
            " join pg_roles u on u.oid = m.member where u.rolname = %s order by 1",
            [login],
        )
        return [row[0] for row in rows]


def drop_logins(admin_url: str, prefix: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for suffix in ("web", "stripe", "workers", "signin"):
            conn.execute(
                sql.SQL("drop role if exists {}").format(sql.Identifier(f"{prefix}_{suffix}"))
            )


def test_rerunning_takes_the_web_role_from_a_workers_login_made_before_0026(
    app, admin_url, database_url
):
    """A deployment whose workers login was made when the sweep needed tokenbill_app: running
    db-logins again leaves it tokenbill_notifier + tokenbill_sweeper, and the sweep still runs."""
    prefix = f"tb_t{os.getpid()}_{uuid.uuid4().hex[:6]}"
    workers = f"{prefix}_workers"
    try:
        db_logins.ensure_login(
            admin_url, workers, "pw-workers", ["tokenbill_notifier", "tokenbill_app"]
        )
        result = run_db_logins(app, admin_url, database_url, prefix)
        assert result.exit_code == 0, result.output

        assert groups_of(admin_url, workers) == ["tokenbill_notifier", "tokenbill_sweeper"]
        url = make_conninfo(database_url, user=workers, password="pw-workers")
        with psycopg.connect(url) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("set role tokenbill_app")
            conn.rollback()
            conn.execute("set role tokenbill_sweeper")
            assert conn.execute("select api.expire_agent_holds()").fetchone() is not None
    finally:
        drop_logins(admin_url, prefix)


def test_rerunning_after_0031_adds_the_auth_login_and_the_web_login_loses_the_hashes(
    app, admin_url, database_url
):
    """A deployment whose logins were made before 0031 (no auth login): after `migrate`,
    running db-logins again makes ``prefix``_signin, which checks passwords, while the web login
    it had all along can no longer read a hash."""
    prefix = f"tb_t{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        db_logins.ensure_login(admin_url, f"{prefix}_web", "pw-web", db_logins.GROUPS["web"])
        result = run_db_logins(app, admin_url, database_url, prefix)
        assert result.exit_code == 0, result.output

        assert groups_of(admin_url, f"{prefix}_signin") == ["tokenbill_auth"]
        query = "select count(*) from api.user_credentials('nobody@example.test')"
        with psycopg.connect(
            make_conninfo(database_url, user=f"{prefix}_signin", password="pw-signin")
        ) as conn:
            conn.execute("set role tokenbill_auth")
            assert conn.execute(query).fetchone() == (0,)
        with psycopg.connect(
            make_conninfo(database_url, user=f"{prefix}_web", password="pw-web")
        ) as conn:
            conn.execute("set role tokenbill_app")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)
    finally:
        drop_logins(admin_url, prefix)


def test_no_login_the_default_prefix_makes_is_named_like_a_group_role():
    """With the default prefix ``tokenbill``, a login named after its duty ``auth`` would be
    the group role tokenbill_auth itself."""
    groups = {group for wanted in db_logins.GROUPS.values() for group in wanted}
    assert {f"tokenbill_{duty}" for duty in db_logins.GROUPS}.isdisjoint(groups)


def test_a_group_role_is_never_turned_into_a_login(admin_url):
    """The adversary is a login name that is a group role's (as ``tokenbill`` + ``_auth`` was
    tokenbill_auth's, or a mistyped --prefix): ALTER ROLE would give the group LOGIN and a
    password, so whoever holds that password holds the group's privileges, and it would become
    a member of the login's groups. A throwaway group stands in for a real one."""
    group = f"tb_t{os.getpid()}_{uuid.uuid4().hex[:6]}_group"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(group)))
    try:
        with pytest.raises(click.ClickException, match=group):
            db_logins.ensure_login(admin_url, group, "pw", ["tokenbill_app"])
        with psycopg.connect(admin_url) as conn:
            row = conn.execute(
                "select rolcanlogin, rolinherit from pg_roles where rolname = %s", [group]
            ).fetchone()
        assert row == (False, True)
        assert groups_of(admin_url, group) == []
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(group)))

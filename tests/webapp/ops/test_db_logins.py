"""webapp.ops.db_logins: the logins scripts/run and compose hand to the app."""

from __future__ import annotations

import os
import shlex
import uuid

import psycopg
from psycopg import sql

from webapp.ops import db_logins


def test_makes_noinherit_non_superuser_logins_and_prints_their_urls(app, admin_url, database_url):
    prefix = f"tb_t{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        result = app.test_cli_runner().invoke(
            args=[
                "db-logins",
                "--admin-url", admin_url,
                "--database-url", database_url,
                "--prefix", prefix,
                "--web-password", "pw-web",
                "--stripe-password", "pw-stripe",
                "--workers-password", "pw-workers",
            ]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        exports = dict(shlex.split(line)[1].split("=", 1) for line in result.output.splitlines())
        assert set(exports) == {"DATABASE_URL", "WEBHOOK_DATABASE_URL", "WORKER_DATABASE_URL"}
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
            (f"{prefix}_stripe", False, False, False, ["tokenbill_webhook"]),
            (f"{prefix}_web", False, False, False, ["tokenbill_admin", "tokenbill_app"]),
            # the background loops: no admin, no Stripe events
            (f"{prefix}_workers", False, False, False, ["tokenbill_app", "tokenbill_notifier"]),
        ]
        with psycopg.connect(exports["WEBHOOK_DATABASE_URL"]) as conn:
            assert conn.execute("select current_user").fetchone() == (f"{prefix}_stripe",)
        with psycopg.connect(exports["WORKER_DATABASE_URL"]) as conn:
            assert conn.execute("select current_user").fetchone() == (f"{prefix}_workers",)
        # run again: same logins, memberships unchanged (idempotent)
        db_logins.ensure_login(admin_url, f"{prefix}_web", "pw-web", ["tokenbill_app"])
        with psycopg.connect(admin_url) as conn:
            groups = conn.execute(
                "select array_agg(g.rolname::text) from pg_auth_members m"
                " join pg_roles g on g.oid = m.roleid join pg_roles u on u.oid = m.member"
                " where u.rolname = %s",
                [f"{prefix}_web"],
            ).fetchone()
        assert groups == (["tokenbill_app"],)  # a group no longer listed is revoked
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for suffix in ("web", "stripe", "workers"):
                conn.execute(
                    sql.SQL("drop role if exists {}").format(sql.Identifier(f"{prefix}_{suffix}"))
                )

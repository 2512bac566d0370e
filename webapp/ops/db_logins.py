"""Create (or update) the non-superuser logins the app connects with.

Why: connecting as a superuser or the owner makes ``SET ROLE tokenbill_app`` decorative, since
``RESET ROLE`` undoes it. Each login made here is NOSUPERUSER NOINHERIT, a member of exactly
the group roles given, and holds nothing until it runs ``SET ROLE`` (webapp.db does).

    flask --app webapp db-logins --admin-url URL --database-url URL [--prefix tokenbill]

creates ``<prefix>_web`` (tokenbill_app + tokenbill_admin, the web app), ``<prefix>_stripe``
(tokenbill_webhook), ``<prefix>_workers`` (tokenbill_notifier + tokenbill_sweeper: the
background loops claim top-ups and alerts and settle expired agent holds, and cannot act as the
web app, make admins or apply Stripe events) and ``<prefix>_signin`` (tokenbill_auth: reads
password hashes for the login and change-password checks, nothing else; 0031) and prints
``export DATABASE_URL=...``, ``WEBHOOK_DATABASE_URL``, ``WORKER_DATABASE_URL`` and
``AUTH_DATABASE_URL`` lines for eval. Passwords come from --web-password/--stripe-password/
--workers-password/--signin-password (WEB_DB_PASSWORD/STRIPE_DB_PASSWORD/WORKERS_DB_PASSWORD/
SIGNIN_DB_PASSWORD), else .data/db-logins (0600, made once, reused). A group no longer listed
for a login is revoked on the next run; a login added since (``_signin``) is made then. A
login is never named like a group role (``tokenbill_auth``): an existing role that cannot log
in is refused, never altered into a login.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Iterable
from pathlib import Path

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

DATA_FILE = Path(__file__).resolve().parents[2] / ".data" / "db-logins"
GROUPS = {
    "web": ["tokenbill_app", "tokenbill_admin"],
    "stripe": ["tokenbill_webhook"],
    "workers": ["tokenbill_notifier", "tokenbill_sweeper"],
    "signin": ["tokenbill_auth"],
}
EXPORTS = {
    "web": "DATABASE_URL",
    "stripe": "WEBHOOK_DATABASE_URL",
    "workers": "WORKER_DATABASE_URL",
    "signin": "AUTH_DATABASE_URL",
}


def ensure_login(admin_url: str, name: str, password: str, groups: Iterable[str]) -> None:
    """Create or update login ``name``: NOINHERIT, no special rights, member of ``groups`` only.

    An existing role that cannot log in is a group role (or someone else's): ALTER would hand
    its privileges to whoever holds the new password, so it is refused."""
    ident = sql.Identifier(name)
    attrs = sql.SQL(
        "login noinherit nosuperuser nocreatedb nocreaterole noreplication nobypassrls password {}"
    ).format(sql.Literal(password))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("select rolcanlogin from pg_roles where rolname = %s", [name]).fetchone()
        if row is not None and not row[0]:
            raise click.ClickException(f"{name} is a role that cannot log in, not a login: refused")
        verb = "alter" if row else "create"
        conn.execute(sql.SQL(verb + " role {} {}").format(ident, attrs))
        wanted = set(groups)
        current = {
            r[0]
            for r in conn.execute(
                "select g.rolname from pg_auth_members m join pg_roles g on g.oid = m.roleid"
                " join pg_roles u on u.oid = m.member where u.rolname = %s",
                [name],
            )
        }
        for group in sorted(current - wanted):
            conn.execute(sql.SQL("revoke {} from {}").format(sql.Identifier(group), ident))
        for group in sorted(wanted - current):
            conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(group), ident))


def _passwords(path: Path) -> dict[str, str]:
    """name=password lines kept between runs, so existing connections' URLs stay valid."""
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def _save(path: Path, passwords: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(passwords.items())))


def make_logins(
    admin_url: str, database_url: str, prefix: str, given: dict[str, str | None]
) -> dict[str, str]:
    """Ensure every login; return their connection URLs by duty (web, stripe, workers, signin)."""
    stored = {} if all(given.values()) else _passwords(DATA_FILE)
    urls = {}
    for suffix, groups in GROUPS.items():
        name = f"{prefix}_{suffix}"
        password = given[suffix] or stored.setdefault(name, secrets.token_urlsafe(24))
        ensure_login(admin_url, name, password, groups)
        urls[suffix] = make_conninfo(database_url, user=name, password=password)
    if not all(given.values()):
        _save(DATA_FILE, stored)
    return urls


@click.command("db-logins")
@click.option("--admin-url", required=True, help="A role that may CREATE ROLE.")
@click.option("--database-url", required=True, help="The app's database (host, db).")
@click.option("--prefix", default="tokenbill", show_default=True)
@click.option("--web-password", envvar="WEB_DB_PASSWORD")
@click.option("--stripe-password", envvar="STRIPE_DB_PASSWORD")
@click.option("--workers-password", envvar="WORKERS_DB_PASSWORD")
@click.option("--signin-password", envvar="SIGNIN_DB_PASSWORD")
def command(
    admin_url: str,
    database_url: str,
    prefix: str,
    web_password: str | None,
    stripe_password: str | None,
    workers_password: str | None,
    signin_password: str | None,
) -> None:
    """Create the app's NOINHERIT logins; print `export ...` lines for eval."""
    given = {
        "web": web_password,
        "stripe": stripe_password,
        "workers": workers_password,
        "signin": signin_password,
    }
    urls = make_logins(admin_url, database_url, prefix, given)
    for duty, variable in EXPORTS.items():
        click.echo(f"export {variable}={shlex.quote(urls[duty])}")

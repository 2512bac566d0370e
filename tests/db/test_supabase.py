"""tokenbill on a Supabase-shaped PostgreSQL: non-superuser owner, Supabase's API roles present.

A throwaway cluster of our own (so roles are created fresh, and the server can really be
stopped) laid out like a Supabase project: the cluster's superuser stands in for
``supabase_admin``; ``supa_postgres`` is the dashboard's ``postgres`` (LOGIN CREATEROLE
CREATEDB, not a superuser, owner of the database); ``anon``, ``authenticated`` and
``service_role`` are NOINHERIT as Supabase creates them, and schema ``public`` hands every new
table and function to them by default privileges, as Supabase's does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.conftest import WEBHOOK_SECRET
from tests.support import stripe_events as ev
from tests.support.edge_functions import postgres_url, serve_function
from webapp.ops import migrate
from workshop.net import free_port
from workshop.services import postgres as services

OWNER = "supa_postgres"
# db/README.md step 3: one login per function, each a member of one group role only.
EDGE_LOGINS = {"webhook": "tokenbill_edge_webhook", "agent": "tokenbill_edge_agent"}
EDGE_GROUPS = {"webhook": "tokenbill_webhook", "agent": "tokenbill_app"}
GROUP_ROLES = (
    "tokenbill_admin",
    "tokenbill_app",
    "tokenbill_auth",
    "tokenbill_notifier",
    "tokenbill_sweeper",
    "tokenbill_webhook",
)
API_ROLES = ("anon", "authenticated", "service_role")
SERVICE_ROLE_SQL = Path(__file__).resolve().parents[2] / "db" / "supabase" / "service_role.sql"

SUPABASE_ROLES = f"""
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;
create role {OWNER} login createrole createdb bypassrls nosuperuser;
grant anon, authenticated, service_role to {OWNER} with admin option;
"""
# What Supabase's owner sets up in every project database before any user migration.
SUPABASE_PUBLIC_DEFAULTS = """
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on sequences to anon, authenticated, service_role;
"""

# Every privilege a role holds on tokenbill's objects, directly or through PUBLIC.
PRIVILEGES = """
select 'schema ' || n.nspname as object, p.privilege
  from pg_namespace n, unnest(array['USAGE', 'CREATE']) p(privilege)
 where n.nspname in ('api', 'tokenbill') and has_schema_privilege(%(role)s, n.oid, p.privilege)
union all
select 'routine ' || f.oid::regprocedure::text, 'EXECUTE'
  from pg_proc f join pg_namespace n on n.oid = f.pronamespace
 where n.nspname in ('api', 'tokenbill') and has_function_privilege(%(role)s, f.oid, 'EXECUTE')
union all
select 'relation ' || c.oid::regclass::text, p.privilege
  from pg_class c join pg_namespace n on n.oid = c.relnamespace,
       unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                    'TRIGGER']) p(privilege)
 where n.nspname in ('api', 'tokenbill', 'public') and c.relkind in ('r', 'p', 'v', 'm', 'f')
   and has_table_privilege(%(role)s, c.oid, p.privilege)
"""


@dataclass
class SupabaseLike:
    data_dir: Path
    port: int
    superuser_url: str
    owner_url: str
    applied: list[str]

    def connect(self, url: str | None = None) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(url or self.owner_url, autocommit=True, row_factory=dict_row)

    def privileges(self, role: str) -> set[tuple[str, str]]:
        with self.connect() as conn:
            rows = conn.execute(PRIVILEGES, {"role": role}).fetchall()
        return {(r["object"], r["privilege"]) for r in rows}


def _bindirs_by_major() -> dict[str, Path]:
    """One server build per PostgreSQL major available (Debian's 15, pgserver's 16): role
    rules changed in 16 (CREATEROLE), and Supabase runs 15 and 17 projects."""
    found: dict[str, Path] = {}
    for bindir in services._candidate_bindirs():
        if os.geteuid() == 0 and not services._reachable_by_others(bindir / "postgres"):
            continue  # the cluster's OS user could not run it (as in services._choose_bindir)
        major = services._pg_major(bindir)
        if major and major not in found:
            found[major] = bindir
    return found


BINDIRS = _bindirs_by_major()


@pytest.fixture(scope="module", params=sorted(BINDIRS), ids=lambda major: f"pg{major}")
def supabase(request: pytest.FixtureRequest) -> Iterator[SupabaseLike]:
    """The cluster, with every migration applied by the non-superuser owner."""
    base = Path(tempfile.mkdtemp(prefix="tokenbill-supabase-"))
    base.chmod(0o755)  # the cluster's OS user must be able to enter it
    data_dir, port = base / "pg", free_port()
    try:
        # services starts an existing cluster with binaries of its major: create it with ours
        user = services._ensure_service_user(data_dir)
        services._prepare_data_dir(data_dir, user)
        services._initdb(BINDIRS[request.param], data_dir, user)
        superuser_url = services.ensure_postgres(data_dir, port)
        with psycopg.connect(superuser_url) as conn:
            version = conn.execute("show server_version_num").fetchone()[0]  # type: ignore[index]
        assert version.startswith(request.param)
        with psycopg.connect(superuser_url, autocommit=True) as conn:
            conn.execute(SUPABASE_ROLES)
            conn.execute(f"create database tokenbill owner {OWNER}")
        owner_url = make_conninfo(superuser_url, user=OWNER, dbname="tokenbill")
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute(SUPABASE_PUBLIC_DEFAULTS)
        applied = migrate.upgrade(owner_url)
        yield SupabaseLike(data_dir, port, superuser_url, owner_url, applied)
    finally:
        with contextlib.suppress(Exception):
            services.stop_postgres(data_dir)
        shutil.rmtree(base, ignore_errors=True)


def mirror(supabase: SupabaseLike, choice: str | None = None) -> None:
    """db/supabase/service_role.sql, by the owner, as the deploy guide says (choice: the
    tokenbill.service_role_mirrors setting; None: unset, the default)."""
    with supabase.connect() as conn:
        if choice is not None:
            conn.execute("select set_config('tokenbill.service_role_mirrors', %s, false)", [choice])
        conn.execute(SERVICE_ROLE_SQL.read_text())  # type: ignore[arg-type]  # trusted file


@pytest.fixture(scope="module")
def mirrored(supabase: SupabaseLike) -> SupabaseLike:
    mirror(supabase)
    return supabase


def test_every_migration_applies_as_a_non_superuser_owner(supabase: SupabaseLike):
    assert supabase.applied == [m.version for m in migrate.discover()]
    with supabase.connect() as conn:
        me = conn.execute(
            "select rolsuper, rolcreaterole from pg_roles where rolname = current_user"
        ).fetchone()
        schema_owner = conn.execute(
            "select pg_get_userbyid(nspowner) as name from pg_namespace where nspname = 'api'"
        ).fetchone()
        groups = conn.execute(
            "select rolname, rolcanlogin from pg_roles where rolname = any(%s) order by rolname",
            [list(GROUP_ROLES)],
        ).fetchall()
    assert me == {"rolsuper": False, "rolcreaterole": True}
    assert schema_owner == {"name": OWNER}
    # 0001's, 0013's, 0026's and 0031's group roles, made by the owner with CREATEROLE alone;
    # none can log in
    assert groups == [{"rolname": name, "rolcanlogin": False} for name in GROUP_ROLES]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_supabase_public_roles_reach_nothing_of_tokenbill(supabase: SupabaseLike, role: str):
    """The anon key is public: it must not call api.handle_stripe_event, nor touch the
    migrations table that Supabase's default privileges on schema public would hand it."""
    assert supabase.privileges(role) == set()


def test_service_role_gets_exactly_what_the_app_role_gets(supabase: SupabaseLike):
    app = supabase.privileges("tokenbill_app")
    assert (
        "routine api.begin_agent_request(uuid,text,uuid,text,text,text,integer)",
        "EXECUTE",
    ) in app
    assert ("routine api.handle_stripe_event(jsonb,boolean)", "EXECUTE") not in app  # 0013
    with supabase.connect() as conn:  # what db/README.md used to advise
        conn.execute("grant tokenbill_app to service_role")
    assert supabase.privileges("service_role") == set()  # NOINHERIT: a membership is not enough
    with supabase.connect() as conn:
        conn.execute("revoke tokenbill_app from service_role")

    for _ in range(2):  # idempotent: run after every migration
        mirror(supabase)

    assert supabase.privileges("service_role") == app


def test_service_role_mirrors_one_group_role_at_most(supabase: SupabaseLike):
    """The service key reaches service_role: it may hold the web role's or the webhook's
    privileges, never both (it could then forge grants), and `none` leaves it nothing."""
    webhook = supabase.privileges("tokenbill_webhook")
    assert ("routine api.handle_stripe_event(jsonb,boolean)", "EXECUTE") in webhook
    try:
        mirror(supabase, "tokenbill_webhook")
        assert supabase.privileges("service_role") == webhook

        for refused in ("tokenbill_app,tokenbill_webhook", "tokenbill_admin", "postgres"):
            with pytest.raises(psycopg.errors.RaiseException, match="service_role_mirrors"):
                mirror(supabase, refused)
            assert supabase.privileges("service_role") == webhook  # unchanged

        mirror(supabase, "none")
        assert supabase.privileges("service_role") == set()
    finally:
        mirror(supabase)
    assert supabase.privileges("service_role") == supabase.privileges("tokenbill_app")


def test_service_role_calls_the_api_like_postgrest_would(mirrored: SupabaseLike):
    """PostgREST logs in as authenticator and switches to service_role for the secret key:
    mirroring the web role, it can reserve an agent call but not apply a Stripe event."""
    authenticator = make_conninfo(mirrored.superuser_url, user="authenticator", dbname="tokenbill")
    evt = ev.event("customer.created", {"id": "cus_1", "object": "customer"})
    with mirrored.connect(authenticator) as conn:
        conn.execute("set role service_role")
        price = conn.execute("select max_per_call from api.agent_price('*')").fetchone()
        assert price == {"max_per_call": 1}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "select * from api.handle_stripe_event(%s::jsonb)", [ev.encode(evt).decode()]
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from tokenbill.users")


@pytest.fixture(scope="module")
def edge_logins(mirrored: SupabaseLike) -> dict[str, str]:
    """The functions' logins (db/README.md step 3), NOINHERIT: nothing until SET ROLE, and
    each can become one group role only. Their postgres:// URLs by caller."""
    urls = {}
    with mirrored.connect() as conn:
        for caller, login in EDGE_LOGINS.items():
            conn.execute(f"create role {login} login noinherit")
            conn.execute(f"grant {EDGE_GROUPS[caller]} to {login}")
            urls[caller] = postgres_url(make_conninfo(mirrored.owner_url, user=login))
    for login in EDGE_LOGINS.values():
        assert mirrored.privileges(login) == set()
    return urls


def register(supabase: SupabaseLike, balance: int = 0) -> uuid.UUID:
    """A new user holding ``balance`` tokens (funded by a new admin, as operators do)."""
    with supabase.connect() as conn:
        emails = [f"{uuid.uuid4().hex}@example.test" for _ in range(2)]
        user, admin = (
            conn.execute("select api.register_user(%s, 'x') as id", [email]).fetchone()["id"]
            for email in emails
        )
        if balance:
            conn.execute("select api.set_admin(%s)", [emails[1]])
            conn.execute("select api.admin_adjust(%s, %s, %s, 'test')", [admin, user, balance])
    return user


def balance(supabase: SupabaseLike, user: uuid.UUID) -> int:
    with supabase.connect() as conn:
        return conn.execute("select balance from api.accounts where id = %s", [user]).fetchone()[
            "balance"
        ]


def signed_post(url: str, evt: dict[str, Any]) -> requests.Response:
    body, header = ev.signed(evt, WEBHOOK_SECRET)
    return requests.post(url, data=body, headers={"Stripe-Signature": header}, timeout=30)


def webhook_settings(url: str, **extra: str) -> dict[str, str]:
    return {
        "TOKENBILL_WEBHOOK_DATABASE_URL": url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TOKENBILL_DB_TIMEOUT_SECONDS": "2",
        **extra,
    }


def test_webhook_function_on_supabase_layout_survives_a_database_stop(
    mirrored: SupabaseLike, edge_logins: dict[str, str]
):
    user = register(mirrored)
    first = ev.checkout_session_completed(user, "tokens_100", 500)
    second = ev.payment_intent_succeeded(user, "tokens_250", 1000)
    with serve_function("stripe-webhook", **webhook_settings(edge_logins["webhook"])) as fn:
        assert signed_post(fn.url, first).json()["outcome"] == "processed"
        assert balance(mirrored, user) == 100

        services.stop_postgres(mirrored.data_dir)
        try:
            refused = signed_post(fn.url, second)
        finally:
            services.ensure_postgres(mirrored.data_dir, mirrored.port)
        assert refused.status_code == 500

        retried = signed_post(fn.url, second)
        assert retried.status_code == 200 and retried.json()["outcome"] == "processed"
        assert signed_post(fn.url, first).json()["outcome"] == "duplicate"
    assert balance(mirrored, user) == 350


def test_agent_meter_on_supabase_layout_reserves_and_settles(
    mirrored: SupabaseLike, edge_logins: dict[str, str]
):
    user = register(mirrored, balance=2)
    key = "tb_" + uuid.uuid4().hex
    with mirrored.connect() as conn:
        conn.execute(
            "select api.create_api_key(%s, 'edge', %s, %s)",
            [user, key[:10], hashlib.sha256(key.encode()).hexdigest()],
        )
    settings = {"TOKENBILL_AGENT_DATABASE_URL": edge_logins["agent"]}
    with serve_function("agent-meter", **settings) as fn:
        response = requests.post(
            fn.url, json={"message": "hi"}, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
    assert response.status_code == 200 and response.json()["cost"] == 1
    assert balance(mirrored, user) == 1
    with mirrored.connect() as conn:
        kinds = [
            r["kind"]
            for r in conn.execute(
                "select kind from api.ledger_entries where user_id = %s order by id", [user]
            )
        ]
        assert conn.execute("select * from api.ledger_audit()").fetchall() == []
    assert kinds == ["admin_adjustment", "reserve"]


def test_the_agent_login_still_sweeps_expired_holds(edge_logins: dict[str, str]):
    """0026 granted the sweep to tokenbill_sweeper alone; the agent-meter's login keeps it
    through tokenbill_app's membership, on each server major (its sweep's failures are only
    logged, so a call refused would go unnoticed by the requests above)."""
    with psycopg.connect(edge_logins["agent"], autocommit=True) as conn:
        conn.execute("set role tokenbill_app")
        [settled] = conn.execute("select api.expire_agent_holds()").fetchone() or [None]
    assert isinstance(settled, int)  # refused: InsufficientPrivilege above


def test_each_login_does_only_its_own_functions_work(
    mirrored: SupabaseLike, edge_logins: dict[str, str]
):
    """Swapped logins (a misconfiguration, or one function's login stolen by the other) fail
    closed: the agent's login cannot apply an event, the webhook's cannot charge anyone."""
    user = register(mirrored, balance=2)
    evt = ev.checkout_session_completed(user, "tokens_100", 500)
    with serve_function("stripe-webhook", **webhook_settings(edge_logins["agent"])) as fn:
        assert signed_post(fn.url, evt).status_code == 500

    key = "tb_" + uuid.uuid4().hex
    with mirrored.connect() as conn:
        conn.execute(
            "select api.create_api_key(%s, 'edge', %s, %s)",
            [user, key[:10], hashlib.sha256(key.encode()).hexdigest()],
        )
    with serve_function("agent-meter", TOKENBILL_AGENT_DATABASE_URL=edge_logins["webhook"]) as fn:
        response = requests.post(
            fn.url, json={"message": "hi"}, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
    assert response.status_code == 503
    assert balance(mirrored, user) == 2
    with mirrored.connect() as conn:
        assert (
            conn.execute("select 1 from api.stripe_events where id = %s", [evt["id"]]).fetchone()
            is None
        )


def test_the_builtin_supabase_db_url_works_once_postgres_may_become_the_webhook_role(
    mirrored: SupabaseLike,
):
    """The fallback of db/README.md step 3: no TOKENBILL_*_DATABASE_URL, the owner's login."""
    evt = ev.event("customer.created", {"id": "cus_2", "object": "customer"})
    settings = {"SUPABASE_DB_URL": postgres_url(mirrored.owner_url)}
    with serve_function("stripe-webhook", STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, **settings) as fn:
        assert signed_post(fn.url, evt).status_code == 500  # not a member of tokenbill_webhook
        with mirrored.connect() as conn:
            conn.execute(f"grant tokenbill_webhook to {OWNER}")
        answer = signed_post(fn.url, evt)
    assert answer.status_code == 200 and answer.json()["outcome"] == "ignored"

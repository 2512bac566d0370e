"""The app behind PgBouncer in transaction mode (Debian's pgbouncer, started by the test).

In transaction mode a client's transactions run on whichever server connection is free, so
session state is shared between clients: a ``SET ROLE`` one client ran is still in force for
the next client on that server connection, and a server-side prepared statement is on one
server connection only. The adversary: a misconfigured deployment (or another client of the
pooler) leaving a server connection acting as a stronger role. With
DATABASE_TRANSACTION_POOLER the app sets its role in every transaction and prepares nothing,
so the agent and webhook paths work and never run as a leaked role (docs/scaling.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import PASSWORD, WEBHOOK_SECRET, audit, balance_of
from tests.support import stripe_events as ev
from tests.support.agents import bearer, create_key, ndjson
from webapp.db import AUTH_EXTENSION_KEY, EXTENSION_KEY, Database
from webapp.ops import db_logins
from workshop.net import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@pytest.fixture(scope="module")
def logins(admin_url: str, database_url: str) -> Iterator[dict[str, str]]:
    """A web and a Stripe login (NOINHERIT, as flask --app webapp db-logins makes them)."""
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {duty: f"tb_bouncer_{duty}_{tag}" for duty in db_logins.GROUPS}
    for duty, groups in db_logins.GROUPS.items():
        db_logins.ensure_login(admin_url, names[duty], uuid.uuid4().hex, groups)
    yield names
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def bouncer(database_url: str, logins: dict[str, str]) -> Iterator[dict[str, str]]:
    """pgbouncer in transaction mode with ONE server connection per login: every client of a
    login shares it, so leaked session state shows deterministically. Yields login -> URL."""
    server = conninfo_to_dict(database_url)
    folder = Path(tempfile.mkdtemp(prefix="tokenbill-pgbouncer-"))
    port = free_port()
    (folder / "userlist.txt").write_text("".join(f'"{n}" ""\n' for n in logins.values()))
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.get("host", "127.0.0.1")} port={server.get("port", 5432)}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""
        + ("user = postgres\n" if os.geteuid() == 0 else "")
    )
    if os.geteuid() == 0:  # pgbouncer refuses to run as root: it drops to postgres
        shutil.chown(folder, "postgres")
        for child in folder.iterdir():
            shutil.chown(child, "postgres")
    proc = subprocess.Popen(
        [PGBOUNCER, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    urls = {
        duty: make_conninfo(
            "", host="127.0.0.1", port=port, dbname=server["dbname"], user=name, password=""
        )
        for duty, name in logins.items()
    }
    deadline = time.monotonic() + 15
    while True:
        try:
            psycopg.connect(urls["web"], connect_timeout=2).close()
            break
        except psycopg.OperationalError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (
                    (folder / "pgbouncer.log").read_text()
                    if (folder / "pgbouncer.log").exists()
                    else ""
                )
                proc.kill()
                raise RuntimeError(
                    f"pgbouncer did not start: {proc.stderr.read()!r} {log}"
                ) from exc
            time.sleep(0.1)
    try:
        yield urls
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _current_user(db: Database) -> str:
    row = db.fetch_one("select current_user as u")
    assert row is not None
    return row["u"]


@pytest.mark.parametrize("pooler_aware", [False, True])
def test_a_leaked_session_role_is_not_the_apps_role(bouncer, pooler_aware: bool) -> None:
    """Another client leaves the shared server connection acting as tokenbill_admin. A pool
    that set its role once per connection now runs as admin; one that sets it per transaction
    does not."""
    db = Database(bouncer["web"], "tokenbill_app", transaction_pooler=pooler_aware)
    db.open()
    try:
        assert _current_user(db) == "tokenbill_app"
        with psycopg.connect(bouncer["web"], autocommit=True, prepare_threshold=None) as other:
            other.execute("set role tokenbill_admin")  # session state on the one server conn
            seen = _current_user(db)
            other.execute("reset role")
        assert seen == ("tokenbill_app" if pooler_aware else "tokenbill_admin")
    finally:
        db.close()


def test_agent_and_webhook_paths_work_behind_pgbouncer(
    make_app, bouncer, owner, make_user: Callable[..., uuid.UUID]
) -> None:
    app = make_app(
        DATABASE_URL=bouncer["web"],
        WEBHOOK_DATABASE_URL=bouncer["stripe"],
        DATABASE_TRANSACTION_POOLER=True,
    )
    user = make_user()
    cs = ev.new_id("cs")
    owner.execute("select api.record_checkout_session(%s, %s, 'tokens_100')", [cs, user])
    body, header = ev.signed(
        ev.checkout_session_completed(user, "tokens_100", 500, cs=cs), WEBHOOK_SECRET
    )
    client = app.test_client()
    response = client.post("/api/webhook/stripe", data=body, headers={"Stripe-Signature": header})
    assert response.status_code == 200 and response.get_json()["outcome"] == "processed"
    assert balance_of(owner, user) == 100

    headers = bearer(create_key(owner, user))
    statuses: list[int] = []
    streams: list[bool | None] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        local = app.test_client()
        for i in range(6):  # > psycopg's prepare threshold (5) on every pooled connection
            key = {"Idempotency-Key": f"bouncer-{n}-{i}", **headers}
            got = local.post("/api/agent", json={"message": f"hello {n} {i}"}, headers=key)
            streamed = local.post(
                "/api/agent",
                json={"message": f"stream {n} {i}", "stream": True},
                headers={**key, "Idempotency-Key": f"bouncer-s-{n}-{i}"},
            )
            lines = ndjson(streamed.get_data())  # read to the end, like a client that stays
            with lock:
                statuses.extend([got.status_code, streamed.status_code])
                streams.append(lines[-1].get("done"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 48 and streams == [True] * 24, (statuses, streams)
    assert balance_of(owner, user) == 100 - 48
    replay = client.post(
        "/api/agent",
        json={"message": "hello 0 0"},
        headers={"Idempotency-Key": "bouncer-0-0", **headers},
    )
    assert replay.status_code == 200 and balance_of(owner, user) == 52
    assert _current_user(app.extensions[EXTENSION_KEY]) == "tokenbill_app"
    assert audit(owner) == []


def test_password_checks_run_as_the_auth_login_behind_pgbouncer(make_app, bouncer, member) -> None:
    """The auth pool (0031) sets tokenbill_auth in every transaction and prepares nothing
    either: more logins than psycopg's prepare threshold (5) share one server connection."""
    app = make_app(
        DATABASE_URL=bouncer["web"],
        WEBHOOK_DATABASE_URL=bouncer["stripe"],
        AUTH_DATABASE_URL=bouncer["signin"],
        DATABASE_TRANSACTION_POOLER=True,
    )
    _, email = member()
    client = app.test_client()
    for _ in range(7):
        login = client.post("/auth/login", data={"email": email, "password": PASSWORD})
        assert login.status_code == 303
        assert client.post("/auth/logout").status_code == 303
    assert _current_user(app.extensions[AUTH_EXTENSION_KEY]) == "tokenbill_auth"

"""webapp/ops/workers.py: the three background loops in one supervised process.

Against the real PostgreSQL and stripe-mock (behind the recording proxy). The adversaries: a
loop that crashes or fails every pass, a database that is down, an operator who left payments
simulated in production, two supervisors at once, and a worker login with too many rights.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.support.agents import begin_request, make_overdue, open_holds
from tests.support.auto_topup import only_our_topups, queued  # noqa: F401 (a fixture)
from tests.support.polling import wait_for
from tests.support.recording_proxy import RecordedRequest
from webapp.ops import db_logins
from webapp.ops.workers import Loop, Supervisor, build_loops, expire_holds, run_pass, take_lock

pytestmark = pytest.mark.usefixtures("only_our_topups")

INTENTS = "/v1/payment_intents"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def supervise() -> Iterator[Callable[[Supervisor], threading.Thread]]:
    """Run supervisors in background threads; stop them after the test."""
    running: list[tuple[Supervisor, threading.Thread]] = []

    def start(supervisor: Supervisor) -> threading.Thread:
        thread = threading.Thread(target=supervisor.run, kwargs={"tick": 0.01}, daemon=True)
        thread.start()
        running.append((supervisor, thread))
        return thread

    yield start
    for supervisor, thread in running:
        supervisor.stop.set()
        thread.join(10)


def dev_config(database_url: str, stripe_base: str, **extra: object) -> dict[str, object]:
    return {
        "TOKENBILL_ENV": "development",
        "DATABASE_URL": database_url,
        "STRIPE_SECRET_KEY": "sk_test_tokenbill",
        "STRIPE_API_BASE": stripe_base,
        **extra,
    }


def test_a_failing_loop_never_stops_the_others(supervise, caplog):
    """Stripe down on every pass: the other loops go on; the failing one is retried."""
    passes = {"ok": 0, "broken": 0}

    def broken() -> str | None:
        passes["broken"] += 1
        raise ConnectionError("Stripe is down")

    def ok() -> str | None:
        passes["ok"] += 1
        return None

    supervisor = Supervisor([Loop("broken", 0.01, broken), Loop("ok", 0.01, ok)], max_backoff=0.05)
    with caplog.at_level(logging.INFO, "tokenbill.workers"):
        thread = supervise(supervisor)
        assert wait_for(lambda: passes["broken"] >= 3 and passes["ok"] >= 10)
    assert thread.is_alive() and supervisor.restarts == 0
    assert "broken: pass failed (ConnectionError: Stripe is down)" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_loop_that_dies_is_restarted(supervise, caplog):
    """Even an error no pass catches (a crashed worker) only costs that loop one restart."""
    passes = []

    class Crash(BaseException):
        pass

    def crashes_once() -> str | None:
        passes.append(1)
        if len(passes) == 1:
            raise Crash
        return "alive again"

    supervisor = Supervisor([Loop("fragile", 0.01, crashes_once)])
    with caplog.at_level(logging.INFO, "tokenbill.workers"):
        supervise(supervisor)
        assert wait_for(lambda: len(passes) >= 3)
    assert supervisor.restarts == 1
    assert "fragile: loop died; restarting it in 1s" in caplog.text
    assert "fragile: alive again" in caplog.text


def test_a_database_outage_is_a_log_line_and_a_retry(
    database_url, owner, app_conn, make_user, supervise, caplog
):
    """The database is unreachable, then back (a restart): the sweep resumes by itself."""
    user = make_user(balance=5)
    begin_request(app_conn, user, f"stuck-{uuid.uuid4().hex[:6]}")
    make_overdue(owner, user)
    target = {"url": "postgresql://postgres@127.0.0.1:1/tokenbill"}  # nothing listens on 1
    supervisor = Supervisor(
        [Loop("expire-holds", 0.01, lambda: str(expire_holds(target["url"])))], max_backoff=0.05
    )
    with caplog.at_level(logging.INFO, "tokenbill.workers"):
        supervise(supervisor)
        assert wait_for(lambda: caplog.text.count("expire-holds: pass failed") >= 2)
        assert open_holds(owner, user) == 1
        target["url"] = database_url
        assert wait_for(lambda: open_holds(owner, user) == 0)
        # logged by the loop's thread just after the pass that settled it
        assert wait_for(lambda: "expire-holds: working again after" in caplog.text)
    assert "OperationalError" in caplog.text
    assert supervisor.restarts == 0


def test_two_supervisors_at_once_never_charge_a_topup_twice(
    database_url, owner, app_conn, make_user, proxy
):
    """While one supervisor is inside Stripe with a claimed top-up, the other one's pass must
    skip it and charge another: each top-up reaches Stripe exactly once."""
    rows = [queued(owner, app_conn, make_user)[2] for _ in range(2)]
    in_flight: list[str] = []
    both_inside = threading.Event()

    def hold_first_charge(request: RecordedRequest) -> None:
        if request.method == "POST" and request.path == INTENTS:
            in_flight.append(request.form["metadata[topup_id]"])
            if len(in_flight) == 2:
                both_inside.set()
            both_inside.wait(5)  # the first charge waits (row locked) for the other's

    proxy.on_request = hold_first_charge
    supervisors = [build_loops(dev_config(database_url, proxy.url), {}, 5, 60)[0] for _ in range(2)]
    topup_loops = [
        next(loop for loop in loops if loop.name == "auto-topup") for loops in supervisors
    ]
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda lp=lp: results.append(run_pass(lp))) for lp in topup_loops
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results == [True, True]
    assert both_inside.is_set(), "the two passes never overlapped"
    charged = [r.form["metadata[topup_id]"] for r in proxy.requests_to("POST", INTENTS)]
    assert sorted(charged) == sorted(str(row["id"]) for row in rows)  # each once, none twice
    statuses = owner.execute(
        "select status from api.auto_topups where id = any(%s)", [[row["id"] for row in rows]]
    ).fetchall()
    assert [s["status"] for s in statuses] == ["failed", "failed"]  # stripe-mock's decline


PRODUCTION = {"TOKENBILL_ENV": "production", "SECRET_KEY": "k" * 40}


@pytest.mark.parametrize(
    "settings",
    [
        {**PRODUCTION, "STRIPE_SECRET_KEY": "sk_test_emulator"},
        {**PRODUCTION, "PAYMENTS_SIMULATED": True},
        {"STRIPE_SECRET_KEY": ""},
    ],
    ids=["production-emulator-key", "production-simulated", "no-key"],
)
def test_a_misconfigured_operator_gets_no_topup_charged(
    make_app, database_url, owner, app_conn, make_user, proxy, settings
):
    """Production with a simulated Stripe would answer 'succeeded' for a card nobody charged
    (and grant the tokens through its webhook); without a key there is nothing to charge."""
    _, _, row = queued(owner, app_conn, make_user)
    logins = {"WEBHOOK_DATABASE_URL": database_url, "AUTH_DATABASE_URL": database_url}
    app = make_app(STRIPE_API_BASE=proxy.url, **logins, **settings)

    loops, off = build_loops(app.config, {}, 5, 60)
    assert "auto-topup" not in {loop.name for loop in loops}
    assert any(line.startswith("auto-topup off: ") for line in off)
    result = app.test_cli_runner().invoke(args=["auto-topup", "--once"])
    assert result.exit_code == 2 and "auto top-ups are not charged" in result.output
    assert app.test_cli_runner().invoke(args=["workers", "--once"]).exit_code == 0
    assert proxy.requests == []
    after = owner.execute("select status from api.auto_topups where id = %s", [row["id"]])
    assert after.fetchone()["status"] == "pending"


@pytest.fixture
def workers_login(admin_url, database_url) -> Iterator[str]:
    """A login made exactly as db-logins makes tokenbill_workers; its URL."""
    name = f"tb_w{os.getpid()}_{uuid.uuid4().hex[:6]}"
    db_logins.ensure_login(admin_url, name, "pw-workers", db_logins.GROUPS["workers"])
    try:
        yield make_conninfo(database_url, user=name, password="pw-workers")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def test_one_pass_does_all_three_jobs_as_the_workers_login(
    make_app, workers_login, owner, app_conn, make_user, proxy, receiver, monkeypatch
):
    """`workers --once` with the least-privilege login: a top-up charged, an alert posted, an
    abandoned hold settled."""
    _, _, topup = queued(owner, app_conn, make_user)
    held = make_user(balance=5)
    begin_request(app_conn, held, f"stuck-{uuid.uuid4().hex[:6]}")
    make_overdue(owner, held)
    alerted = make_user(balance=10)
    owner.execute("select * from api.consume(%s, 'w1')", [alerted])
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{receiver.server_port}/hook")
    monkeypatch.setenv("ALERT_WEBHOOK_SECRET", "alert-secret")
    app = make_app(STRIPE_API_BASE=proxy.url, WORKER_DATABASE_URL=workers_login)

    result = app.test_cli_runner().invoke(args=["workers", "--once"])

    assert result.exit_code == 0, result.output
    [charge] = proxy.requests_to("POST", INTENTS)
    assert charge.form["metadata[topup_id]"] == str(topup["id"])
    assert open_holds(owner, held) == 0
    users = {json.loads(body)["user_id"] for _, body in receiver.received}
    assert str(alerted) in users
    # ...and that login can do nothing else: no admin, no Stripe events
    with psycopg.connect(workers_login) as conn:
        for role in ("tokenbill_admin", "tokenbill_webhook"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
            conn.rollback()


# What a stolen WORKER_DATABASE_URL must not reach: the web app's account and key calls.
WEB_ONLY_CALLS = {
    "a password hash": "select * from api.user_credentials(%(email)s)",
    "a new API key": "select api.create_api_key(%(user)s, 'stolen', 'tb_stolen', 'x')",
}


def test_a_stolen_workers_login_cannot_act_as_the_web_app(workers_login, owner, make_user):
    """The adversary holds the workers' URL: it may settle expired holds, but neither SET ROLE
    tokenbill_app nor, as any role it may take, read a password hash or mint an API key."""
    email = f"victim-{uuid.uuid4().hex[:8]}@example.test"
    victim = {"email": email, "user": make_user(email=email, password_hash="victim-hash")}
    with psycopg.connect(workers_login) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("set role tokenbill_app")
        conn.rollback()
        for role in db_logins.GROUPS["workers"]:
            for what, call in WEB_ONLY_CALLS.items():
                conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(call, victim)
                    pytest.fail(f"as {role} the workers login got {what}")
                conn.rollback()
    keys = owner.execute("select id from api.api_keys where user_id = %s", [victim["user"]])
    assert keys.fetchall() == []


def test_the_lock_admits_one_supervisor(tmp_path):
    first = take_lock(tmp_path / "workers.lock")
    assert first is not None
    assert take_lock(tmp_path / "workers.lock") is None
    first.close()
    again = take_lock(tmp_path / "workers.lock")
    assert again is not None
    again.close()


def _flask(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("flask")), "--app", "webapp", *args]


def test_workers_stop_with_their_parent_and_a_second_one_stands_by(database_url, tmp_path):
    """What scripts/run does: a child started before `exec`, stopped when the exec'd
    process exits; a second one for the same checkout waits on the lock."""
    log = tmp_path / "workers.log"
    log.touch()
    env = {**os.environ, "DATABASE_URL": database_url, "TOKENBILL_ENV": "development"}
    env.pop("STRIPE_SECRET_KEY", None)
    lock = tmp_path / "workers.lock"
    script = (
        f"{' '.join(_flask('workers'))} --parent-pid $$ --lock {lock} >>{log} 2>&1 </dev/null &"
        " read -r _; exit 0"  # the `gunicorn` stand-in: lives until its stdin closes
    )
    parents = [
        subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdin=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        assert wait_for(lambda: "standing by" in log.read_text(), 30), log.read_text()
        assert log.read_text().count("workers started") == 1
        pid = int(log.read_text().split("workers started (pid ")[1].split(")")[0])
        # either may have won the lock: the app whose workers run exits first
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        parents.sort(key=lambda parent: parent.pid != ppid)
        parents[0].communicate(b"\n", timeout=10)  # the app exits...
        assert wait_for(lambda: log.read_text().count("workers stopped") == 1, 15)
        assert wait_for(lambda: not _running(pid), 5)  # ...and leaves no orphan behind
        # the one standing by takes over, and stops with its own parent
        assert wait_for(lambda: log.read_text().count("workers started") == 2, 15)
        parents[1].communicate(b"\n", timeout=10)
        assert wait_for(lambda: log.read_text().count("workers stopped") == 2, 15)
    finally:
        for parent in parents:
            if parent.poll() is None:
                parent.kill()
    assert "Traceback" not in log.read_text()


def _running(pid: int) -> bool:
    """A live process (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_expire_agent_requests_loops_with_an_interval(database_url, owner, app_conn, make_user):
    """`expire-agent-requests --interval` keeps sweeping (a cron entry stays one-shot)."""
    user = make_user(balance=5)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TOKENBILL_ENV": "development",
        "PYTHONUNBUFFERED": "1",  # what it printed survives the SIGTERM below
    }
    loop = subprocess.Popen(
        [*_flask("expire-agent-requests", "--interval", "0.2")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)  # a few empty sweeps first
        assert loop.poll() is None
        begin_request(app_conn, user, f"stuck-{uuid.uuid4().hex[:6]}")
        make_overdue(owner, user)
        assert wait_for(lambda: open_holds(owner, user) == 0, 15)
    finally:
        loop.terminate()
        out, err = loop.communicate(timeout=10)
    assert "Settled" in out and "Traceback" not in err

"""scripts/run leaves a working environment behind, in a fresh copy of the checkout.

As a new user would (issue 17): `bash scripts/run` once, then in a new shell with nothing
exported, `flask --app webapp create-admin you@example.com`. The copy has its own .data (so its
own embedded cluster, on its own port) and shares only .venv with this checkout. Then it serves:
the background workers start with the app, once per checkout, and stop with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import PASSWORD
from tests.support.polling import wait_for
from workshop import services
from workshop.net import free_port

REPO = services.REPO_ROOT
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A copy of this checkout's files (no .env, no .data) that shares .venv."""
    base = Path(tempfile.mkdtemp(prefix="tokenbill-clone-"))
    base.chmod(0o755)  # as root, the cluster runs as another user that must reach .data
    clone = base / "tokenbill"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    (clone / ".venv").symlink_to(REPO / ".venv")
    try:
        yield clone
    finally:
        with contextlib.suppress(Exception):
            services.stop_postgres(clone / ".data" / "postgres")
        shutil.rmtree(base, ignore_errors=True)


def _new_shell(clone: Path, *cmd: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run cmd in the clone like a new login shell would: nothing exported but PATH and HOME."""
    home = clone.parent / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run(
        cmd,
        cwd=clone,
        env={"PATH": CLEAN_PATH, "HOME": str(home), "LANG": "C.UTF-8", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _flask(clone: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _new_shell(
        clone, str(clone / ".venv" / "bin" / "flask"), "--app", "webapp", *args, **env
    )


def test_run_setup_then_create_admin_in_a_new_shell(checkout: Path, stripe_mock_url: str) -> None:
    # A .env copied from .env.example with one value chosen by the user.
    (checkout / ".env").write_text("# mine\nSECRET_KEY=chosen-by-me\nDATABASE_URL=\n")

    setup = _new_shell(checkout, "bash", "scripts/run", "--setup-only")
    assert setup.returncode == 0, setup.stderr

    env_file = checkout / ".env"
    values = dotenv_values(env_file)
    port = services.checkout_pg_port(checkout)
    # the owner migrates and runs operator commands; the app gets its non-superuser logins
    assert values["MIGRATION_DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{port}/tokenbill"
    assert conninfo_to_dict(values["DATABASE_URL"])["user"] == "tokenbill_web"
    assert conninfo_to_dict(values["WEBHOOK_DATABASE_URL"])["user"] == "tokenbill_stripe"
    assert conninfo_to_dict(values["AUTH_DATABASE_URL"])["user"] == "tokenbill_signin"
    assert values["TOKENBILL_ENV"] == "development"
    assert values["SECRET_KEY"] == "chosen-by-me"  # never overwritten
    lines = env_file.read_text().splitlines()
    assert sum(line.startswith("DATABASE_URL=") for line in lines) == 1  # filled in place
    assert port != services.checkout_pg_port()  # the clone's own cluster, not ours

    admin = _flask(checkout, "create-admin", "you@example.com", "--password", PASSWORD)
    assert admin.returncode == 0, admin.stderr
    assert "you@example.com is an admin" in admin.stdout
    assert admin.stderr == ""  # no traceback, no SECRET_KEY warning

    # Again, as after a reboot: the cluster is down and .env holds its URL; nothing is added.
    assert services.stop_postgres(checkout / ".data" / "postgres")
    again = _new_shell(checkout, "bash", "scripts/run", "--setup-only")
    assert again.returncode == 0, again.stderr
    assert dotenv_values(env_file) == values
    promoted = _flask(checkout, "create-admin", "you@example.com")
    assert promoted.returncode == 0, promoted.stderr

    # The same cluster serves: the workers run with the app and stop with it.
    _serve_then_stop(checkout, stripe_mock_url)


def _supervisors(clone: Path) -> list[int]:
    """Live `flask ... workers` processes started from the clone."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"workers" in cmdline and os.readlink(proc / "cwd") == os.fspath(clone):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(proc.name))
    return found


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _serve_then_stop(clone: Path, stripe_mock_url: str) -> None:
    """`bash scripts/run` as a user starts it (a Stripe key set, so no emulator); a second
    run while it serves; then Ctrl-C, which the terminal sends to the whole process group."""
    port = free_port()
    home = clone.parent / "home"
    env = {
        "PATH": CLEAN_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PORT": str(port),
        "STRIPE_SECRET_KEY": "sk_test_tokenbill",
        "STRIPE_API_BASE": stripe_mock_url,
    }
    log = clone / ".data" / "workers.log"

    def workers_log() -> str:
        return log.read_text() if log.exists() else ""

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "scripts/run"],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, like a terminal's foreground job
        )

    first = start()
    try:
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 120), workers_log()
        assert wait_for(lambda: "workers started" in workers_log(), 30), workers_log()
        [supervisor] = _supervisors(clone)
        assert f"workers started (pid {supervisor})" in workers_log()

        # Started twice: the second gunicorn cannot bind and exits; its workers stood by and
        # went with it, so the loops never ran twice.
        second = start()
        _, second_err = second.communicate(timeout=180)
        assert second.returncode != 0, second_err
        assert "standing by" in workers_log()
        assert wait_for(lambda: _supervisors(clone) == [supervisor], 10), _supervisors(clone)
        assert workers_log().count("workers started") == 1

        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
        first.wait(timeout=60)
        assert wait_for(lambda: _supervisors(clone) == [], 15), workers_log()  # no orphan
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        for pid in _supervisors(clone):
            os.kill(pid, signal.SIGKILL)
    text = workers_log()
    assert "workers stopped" in text
    # the tokenbill_workers login .env names could run every loop it was given
    assert "pass failed" not in text and "Traceback" not in text, text
    assert "notify-alerts off: ALERT_WEBHOOK_URL" in text
    values = dotenv_values(clone / ".env")
    assert conninfo_to_dict(values["WORKER_DATABASE_URL"] or "")["user"] == "tokenbill_workers"


def test_run_setup_writes_a_private_env_file(checkout: Path) -> None:
    setup = _new_shell(checkout, "bash", "scripts/run", "--setup-only")
    assert setup.returncode == 0, setup.stderr
    env_file = checkout / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # it holds the secret key
    values = dotenv_values(env_file)
    assert len(values["SECRET_KEY"] or "") == 64
    web = conninfo_to_dict(values["DATABASE_URL"] or "")
    assert (web["user"], web["dbname"]) == ("tokenbill_web", "tokenbill")


def test_the_suite_ignores_the_env_file_run_wrote(
    checkout: Path, admin_url: str, stripe_mock_url: str
) -> None:
    """README's two commands in a row. `scripts/run` writes .env naming the checkout's dev
    database and logins; the suite run after it must still test only its own database. Before
    FLASK_SKIP_DOTENV, a test app's webhooks went to the dev database (WEBHOOK_DATABASE_URL
    from .env, loaded into os.environ by one test for every later one) and found no such user."""
    setup = _new_shell(checkout, "bash", "scripts/run", "--setup-only")
    assert setup.returncode == 0, setup.stderr
    assert dotenv_values(checkout / ".env")["WEBHOOK_DATABASE_URL"]
    suite = _new_shell(
        checkout,
        str(checkout / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "tests/workshop/test_send_event.py",
        "tests/webapp/test_config_guards.py::test_gunicorn_style_start_fails_with_the_one_line",
        DATABASE_ADMIN_URL=admin_url, STRIPE_MOCK_URL=stripe_mock_url,
    )  # fmt: skip
    assert suite.returncode == 0, suite.stdout[-4000:]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "Error: DATABASE_URL is not set: run `bash scripts/run` once"),
        (
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/tokenbill"},
            "Error: cannot connect to the database at 127.0.0.1:1/tokenbill",
        ),
        ({"DATABASE_POOL_MAX": "ten"}, "Error: DATABASE_POOL_MAX must be a whole number"),
    ],
)
@pytest.mark.parametrize("command", [["create-admin", "x@example.com"], ["expire-agent-requests"]])
def test_every_command_fails_with_one_clear_line(
    checkout: Path, command: list[str], env: dict[str, str], message: str
) -> None:
    result = _flask(checkout, *command, **env)
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1, result.stderr  # one line: no traceback, no warning
    assert result.stdout == ""


def test_a_database_without_migrations_is_named_with_the_fix(checkout: Path, admin_url) -> None:
    """The old `services status` URL pointed at the `postgres` database: say what to run."""
    result = _flask(checkout, "create-admin", "x@example.com", DATABASE_URL=admin_url)
    assert result.returncode == 1
    assert (
        "has no tokenbill schema" in result.stderr and "flask --app webapp migrate" in result.stderr
    )
    assert result.stderr.count("\n") == 1, result.stderr


def test_flask_help_lists_the_commands_without_configuration(checkout: Path) -> None:
    result = _flask(checkout, "--help")
    assert result.returncode == 0, result.stderr
    assert "create-admin" in result.stdout and "expire-agent-requests" in result.stdout
    assert "Traceback" not in result.stderr


def test_services_status_names_the_app_database(checkout: Path) -> None:
    status = _new_shell(checkout, ".venv/bin/python", "-m", "workshop.services", "status")
    port = services.checkout_pg_port(checkout)
    assert f"postgresql://postgres@127.0.0.1:{port}/tokenbill" in status.stdout
    assert os.fspath(checkout / ".data" / "postgres") in status.stdout

"""Real tests of workshop/services/: a throwaway cluster and stripe-mock on free ports."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from workshop import services
from workshop.net import free_port


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A data dir outside pytest's tmp (mode 0700), so a non-root cluster user can enter it."""
    base = Path(tempfile.mkdtemp(prefix="tokenbill-pgtest-"))
    base.chmod(0o755)
    data_dir = base / "pg"
    try:
        yield data_dir
    finally:
        with contextlib.suppress(Exception):
            services.stop_postgres(data_dir)
        shutil.rmtree(base, ignore_errors=True)


def _select_one(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("select 1").fetchone()[0]


def _cluster_pids(data_dir: Path) -> list[int]:
    """Processes whose cwd is the data dir: the postmaster and its children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == data_dir.resolve():
                    pids.append(int(entry.name))
    return pids


def test_postgres_start_reuse_database_and_stop(cluster_dir: Path) -> None:
    port = free_port()
    url = services.ensure_postgres(cluster_dir, port)
    assert url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
    assert _select_one(url) == 1
    with psycopg.connect(url) as conn:
        assert conn.execute("show max_connections").fetchone()[0] == "200"
        assert conn.execute("show listen_addresses").fetchone()[0] == "127.0.0.1"

    started = time.monotonic()
    assert services.ensure_postgres(cluster_dir, port) == url
    assert time.monotonic() - started < 1.0

    db_url = services.ensure_database(url, "tokenbill_svc_test")
    assert db_url == f"postgresql://postgres@127.0.0.1:{port}/tokenbill_svc_test"
    assert services.ensure_database(url, "tokenbill_svc_test") == db_url
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select current_database()").fetchone()[0] == "tokenbill_svc_test"

    assert services.stop_postgres(cluster_dir) is True
    assert not services._port_open(port)
    assert services.stop_postgres(cluster_dir) is False


def test_postgres_restarts_after_crash_and_bogus_pid_file(cluster_dir: Path) -> None:
    port = free_port()
    url = services.ensure_postgres(cluster_dir, port)
    pid_file = cluster_dir / "postmaster.pid"

    # A crash: the postmaster dies without removing its pid file.
    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while _cluster_pids(cluster_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_file.exists()
    assert services.ensure_postgres(cluster_dir, port) == url
    assert _select_one(url) == 1

    # After a reboot the recorded pid may belong to an unrelated live process (here: us).
    services.stop_postgres(cluster_dir)
    stat = cluster_dir.stat()
    pid_file.write_text(f"{os.getpid()}\n{cluster_dir}\n0\n{port}\n")
    os.chown(pid_file, stat.st_uid, stat.st_gid)
    assert services.ensure_postgres(cluster_dir, port) == url
    assert _select_one(url) == 1


def test_stripe_mock_start_reuse_and_stop() -> None:
    port = free_port()
    try:
        url = services.ensure_stripe_mock(port)
        assert url == f"http://127.0.0.1:{port}"
        assert services._http_answers(port)
        started = time.monotonic()
        assert services.ensure_stripe_mock(port) == url
        assert time.monotonic() - started < 1.0
    finally:
        stopped = services.stop_stripe_mock(port)
        for leftover in (f"stripe-mock-{port}.log", f".stripe-mock-{port}.lock"):
            (services.DATA_ROOT / leftover).unlink(missing_ok=True)
    assert stopped is True
    assert not services._http_answers(port)


# --------------------------------------------------------------------------- Go hidden

HIDDEN_GO_PATH = f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"


def _go_version_of(binary: Path) -> str:
    """The Go release that built binary (first line of `go version -m`)."""
    out = subprocess.run(
        [str(services.venv_go()), "version", str(binary)],
        capture_output=True,
        text=True,
        check=True,
        env=services.go_environment(services.GO_DIR / "bin"),
    ).stdout
    return out.split(":", 1)[1].split()[0]


def _venv_go_version() -> str:
    out = subprocess.run(
        [str(services.venv_go()), "env", "GOVERSION"],
        capture_output=True,
        text=True,
        check=True,
        env=services.go_environment(services.GO_DIR / "bin"),
    ).stdout
    return out.strip()


def test_the_suites_stripe_mock_was_built_by_the_venvs_go() -> None:
    """scripts/test ran `services up` with other Go hidden; its binary must be the venv's build."""
    binary = services.find_stripe_mock()
    assert binary == services.GO_DIR / "bin" / "stripe-mock"
    assert str(services.venv_go()).startswith(sys.prefix)
    assert _go_version_of(binary) == _venv_go_version()


def test_building_stripe_mock_works_with_every_other_go_hidden(tmp_path: Path) -> None:
    """A fresh HOME and a PATH without /usr/local/go or ~/go: the venv's Go alone builds it."""
    gobin = tmp_path / "bin"
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import shutil, sys; from pathlib import Path; from workshop import services;"
        "print(shutil.which('go')); print(services.build_stripe_mock(Path(sys.argv[1])))"
    )
    env = {"PATH": HIDDEN_GO_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("GOPROXY", "GONOSUM"))})
    proc = subprocess.run(
        [sys.executable, "-c", script, str(gobin)],
        cwd=services.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    which_go, built = proc.stdout.split()
    assert Path(which_go).parent == Path(sys.executable).parent
    assert Path(built) == gobin / "stripe-mock"
    assert _go_version_of(Path(built)) == _venv_go_version()

    # And the whole setup step of scripts/test, as CI runs it: Go hidden, HOME fresh.
    up = subprocess.run(
        [sys.executable, "-m", "workshop.services", "up"],
        cwd=services.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    assert f"DATABASE_ADMIN_URL={services.pg_url()}" in up.stdout
    assert "STRIPE_MOCK_URL=" in up.stdout
    assert not (home / "go").exists() and not (home / ".cache").exists()


# ------------------------------------------------------------------ one cluster per checkout


def test_each_checkout_gets_its_own_stable_port() -> None:
    a = services.checkout_pg_port(Path("/srv/clone-a"))
    b = services.checkout_pg_port(Path("/srv/clone-b"))
    assert a != b
    assert services.checkout_pg_port(Path("/srv/clone-a")) == a
    for port in (a, b, services.checkout_pg_port()):
        # Below the kernel's outgoing-connection range, so no client socket can hold it.
        assert services.PG_PORT_BASE <= port < 32768
    assert (
        services.pg_url()
        == f"postgresql://postgres@127.0.0.1:{services.checkout_pg_port()}/postgres"
    )


def test_each_checkout_gets_its_own_stripe_mock_port() -> None:
    """Checkouts on one machine shared 12111: `services down` in one stopped another's suite."""
    a = services.checkout_stripe_mock_port(Path("/srv/clone-a"))
    b = services.checkout_stripe_mock_port(Path("/srv/clone-b"))
    assert a != b
    assert services.checkout_stripe_mock_port(Path("/srv/clone-a")) == a
    for port in (a, b, services.checkout_stripe_mock_port()):
        # Apart from the clusters' ports and below the kernel's outgoing-connection range.
        assert services.PG_PORT_BASE + services.PG_PORT_SPAN <= port < 32768
    assert services.checkout_stripe_mock_port() != services.checkout_pg_port()


def test_a_port_answered_from_another_data_dir_is_refused(cluster_dir: Path) -> None:
    """Clone B's cluster on clone A's port: A must refuse it, not silently use B's users."""
    port = free_port()
    services.ensure_postgres(cluster_dir, port)
    other = cluster_dir.parent / "other-checkout"
    refusal = re.escape(f"port {port} is taken by the cluster in {cluster_dir}")
    with pytest.raises(RuntimeError, match=refusal):
        services.ensure_postgres(other, port)
    assert not other.exists()  # nothing was created for the refused checkout


def test_a_port_held_by_something_else_is_refused(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def hang_up() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = listener.accept()
                    conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        with pytest.raises(RuntimeError, match="taken by something that is not this cluster"):
            services.ensure_postgres(tmp_path / "pg", port)

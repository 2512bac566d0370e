"""Real tests of scripts/services.py: a throwaway cluster and stripe-mock on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from scripts import services


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    port = _free_port()
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
    port = _free_port()
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
    if services.find_stripe_mock() is None:
        pytest.skip("no stripe-mock binary (scripts/test installs it with `go install`)")
    port = _free_port()
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

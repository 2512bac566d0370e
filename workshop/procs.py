"""Subprocesses the HTTP benchmark and the fault-injection run start and must clean up.

Why a module: both scripts need the production server (gunicorn) on a free loopback port,
waiting until /healthz answers, the pids of its workers (to kill them), and a PostgreSQL
cluster of their own that they may restart at will. Everything started here runs in its own
session, so Ctrl-C in the terminal reaches only us, and we stop it on the way out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from workshop import services
from workshop.net import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    """Live (non-zombie) direct children of pid, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] not in ("Z", "X") and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children, theirs, ...), read from /proc."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return sorted(found)


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ============================================================================================
# gunicorn
# ============================================================================================
@dataclass
class Gunicorn:
    """A running gunicorn master; ``url`` is its base URL."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    workers: int

    def worker_pids(self) -> list[int]:
        """The workers alive right now (the master forks new ones when one dies)."""
        return _children(self.proc.pid)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every worker is up and /healthz answers 200 (the database is reachable)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited ({self.proc.returncode}):\n{tail(self.log_path)}"
                )
            if len(self.worker_pids()) >= self.workers:
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not become healthy:\n{tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master (graceful), then SIGKILL the whole session if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers orphaned by a killed master
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@contextlib.contextmanager
def gunicorn(
    app_spec: str,
    env: Mapping[str, str],
    log_path: Path,
    workers: int = 2,
    threads: int = 4,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Gunicorn]:
    """Serve ``app_spec`` (e.g. ``webapp:create_app()``) on a free port until the block exits.

    ``env`` is the complete environment of the server: nothing leaks in from ours except PATH
    and HOME, so a developer's shell settings cannot change what is measured.
    """
    port = free_port()
    full_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--graceful-timeout",
        "5",
        *extra_args,
        app_spec,
    ]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=str(REPO_ROOT),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Gunicorn(proc, f"http://127.0.0.1:{port}", log_path, workers)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# ============================================================================================
# A private PostgreSQL cluster
# ============================================================================================
@dataclass
class PrivatePostgres:
    """A throwaway cluster in a temp dir: ours to restart, never the shared servers."""

    data_dir: Path
    port: int
    admin_url: str

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast|immediate`` and wait until it accepts connections again."""
        services.restart_postgres(self.data_dir, mode)

    def version(self) -> str:
        """``postgres --version`` of the binaries this cluster runs."""
        return services.postgres_version(self.data_dir)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Create and start a cluster on a free port; stop it and delete its files afterwards.

    The data dir is the temp dir itself (its parent /tmp is world-searchable), because as root
    the server runs as another user that must be able to reach it.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="tokenbill-pg-"))
    port = free_port()
    try:
        admin_url = services.ensure_postgres(data_dir, port)
        yield PrivatePostgres(data_dir, port, admin_url)
    finally:
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            services.stop_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)

"""What every local service shares: where state lives, process and port helpers."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("tokenbill.services")

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = REPO_ROOT / ".data"
START_TIMEOUT = 60.0


def _port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll a zero-argument callable until it returns true or the timeout runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise starts across processes, so two shells don't both run initdb or pg_ctl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _proc_state(pid: int) -> str | None:
    """Process state letter from /proc, or None when the pid does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces: the state follows the last ')'.
    return text.rsplit(")", 1)[-1].split()[0]


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie (PID 1 here does not always reap orphans)."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _pid_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command capturing its output, so that _check can show it when it fails."""
    log.debug("running %s", shlex.join(cmd))
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}): {shlex.join(map(str, proc.args))}\n"
            f"{proc.stdout}{proc.stderr}"
        )


def _stop_by_pid_file(pid_file: Path, name: str) -> bool:
    """SIGTERM (then SIGKILL) the process named in pid_file if it still is `name`."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    stopped = False
    if _pid_alive(pid) and name in _pid_cmdline(pid):
        log.info("stopping %s (pid %d)", name, pid)
        os.kill(pid, signal.SIGTERM)
        if not _wait_for(lambda: not _pid_alive(pid), 5):
            os.kill(pid, signal.SIGKILL)
            _wait_for(lambda: not _pid_alive(pid), 5)
        stopped = True
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our own child
    pid_file.unlink(missing_ok=True)
    return stopped

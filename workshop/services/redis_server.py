"""A throwaway Debian redis-server on a unix socket: shared rate-limit storage for tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from workshop.services.common import _tail as tail


@contextmanager
def redis_server() -> Iterator[str]:
    """Start redis-server (no TCP port, no persistence); yield its limits storage URI."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        raise RuntimeError(
            "redis-server is missing: `apt-get install redis-server` (scripts/test does)"
        )
    folder = Path(tempfile.mkdtemp(prefix="tokenbill-redis-"))
    sock = folder / "redis.sock"
    log = folder / "redis.log"
    cmd = [
        exe,
        *("--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"),
        *("--save", "", "--appendonly", "no", "--dir", str(folder), "--logfile", str(log)),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(unix_socket_path=str(sock)).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{tail(log)}") from None
                time.sleep(0.05)
        yield f"redis+unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(folder, ignore_errors=True)

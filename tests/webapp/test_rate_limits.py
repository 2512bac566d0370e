"""Rate limits: exact across gunicorn workers, and 429s that say when to retry.

The adversary is a client (or a script with an API key) flooding the service: with per-process
counters, 2 gunicorn workers let twice the configured limit through (issue 17). Limits live in
shared storage (Redis) whenever more than one process serves; a 429 always carries Retry-After.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import balance_of
from tests.support.agents import bearer, create_key
from webapp import config
from webapp.extensions import limiter
from workshop import procs
from workshop.net import free_port
from workshop.services.redis_server import redis_server


def _ask(client: Any, headers: dict[str, str]) -> Any:
    return client.post(
        "/api/agent",
        json={"message": "hello"},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )


def test_defaults_fit_a_paid_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    """One message a second, sustained: a person chatting never meets the limit."""
    monkeypatch.delenv("AGENT_RATE_LIMIT", raising=False)
    monkeypatch.delenv("RATELIMIT_STORAGE_URI", raising=False)
    settings = config.from_env()
    assert settings["AGENT_RATE_LIMIT"] == "60 per minute"
    assert settings["RATELIMIT_STORAGE_URI"] == "memory://"
    assert settings["RATELIMIT_STRATEGY"] == "moving-window"


def test_agent_429_says_when_to_retry_in_json(make_app, make_user, owner) -> None:
    app = make_app(RATELIMIT_ENABLED=True, AGENT_RATE_LIMIT="2 per minute")
    user = make_user(balance=5)
    client = app.test_client()
    headers = bearer(create_key(owner, user))
    statuses = [_ask(client, headers).status_code for _ in range(2)]
    refused = _ask(client, headers)

    assert statuses == [200, 200]
    assert refused.status_code == 429
    seconds = int(refused.headers["Retry-After"])
    assert 1 <= seconds <= 60
    body = refused.get_json()
    assert body["retry_after"] == seconds
    assert body["limit"] == "2 per 1 minute"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["retry_at"])
    assert f"Try again in {seconds} seconds" in body["error"]
    assert balance_of(owner, user) == 3  # the refused call charged nothing


def test_login_429_is_a_readable_page_with_retry_after(make_app) -> None:
    app = make_app(RATELIMIT_ENABLED=True, AUTH_RATE_LIMIT="1 per minute")
    client = app.test_client()
    form = {"email": "nobody@example.test", "password": "wrong password"}
    first = client.post("/auth/login", data=form)
    refused = client.post("/auth/login", data=form)

    assert first.status_code != 429
    assert refused.status_code == 429
    assert refused.mimetype == "text/html"
    seconds = int(refused.headers["Retry-After"])
    assert 1 <= seconds <= 60
    assert f"Try again in {seconds} seconds" in refused.get_data(as_text=True)


def test_a_dead_redis_neither_breaks_the_service_nor_lifts_the_limit(make_app, make_user, owner):
    """Storage down: each worker keeps counting in memory until Redis is back; no 500s."""
    app = make_app(
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0",
        AGENT_RATE_LIMIT="2 per minute",
    )
    headers = bearer(create_key(owner, make_user(balance=5)))
    client = app.test_client()
    try:
        statuses = [_ask(client, headers).status_code for _ in range(3)]
    finally:
        limiter._storage_dead = False  # the extension is shared by every app in this process
    assert statuses == [200, 200, 429]


# --------------------------------------------------------------------------- 2 gunicorn workers

LIMIT = 5
CALLS = 24
MEMORY_WARNING = "RATELIMIT_STORAGE_URI is memory:// with 2 workers"


def _until_both_workers_answer(url: str, log_path: Path) -> None:
    """The first worker may answer before the second has booted: wait until both have served."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with ThreadPoolExecutor(4) as pool:  # concurrent, so a busy worker leaves one to the other
            list(pool.map(lambda _: requests.get(f"{url}/healthz", timeout=5), range(8)))
        if len(set(re.findall(r"pid=<?(\d+)>? /healthz ", log_path.read_text()))) == 2:
            return
    raise AssertionError("the second gunicorn worker never answered:\n" + procs.tail(log_path))


def _flood(url: str, secret: str) -> list[int]:
    """CALLS agent requests from 8 concurrent clients, each on its own connection."""

    def call(_: int) -> int:
        response = requests.post(
            f"{url}/api/agent",
            json={"message": "hello"},
            headers={**bearer(secret), "Idempotency-Key": uuid.uuid4().hex},
            timeout=30,
        )
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["retry_after"] >= 1
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(call, range(CALLS)))


def test_the_limit_is_exact_across_two_gunicorn_workers(
    database_url, make_user, owner, tmp_path: Path
) -> None:
    user = make_user(balance=100)
    secret = create_key(owner, user)
    log_path = tmp_path / "gunicorn.log"
    with redis_server() as storage:
        env = {
            "TOKENBILL_ENV": "development",
            "DATABASE_URL": database_url,
            "SECRET_KEY": "test-secret-key",
            "RATELIMIT_STORAGE_URI": storage,
            "AGENT_RATE_LIMIT": f"{LIMIT} per minute",
        }
        access_log = ("--access-logfile", "-", "--access-logformat", "pid=%(p)s %(U)s %(s)s")
        with procs.gunicorn(
            "webapp:create_app()",
            env,
            log_path,
            workers=2,
            threads=1,  # sync workers: a busy one cannot take the next connection
            extra_args=("--no-control-socket", *access_log),
        ) as server:
            _until_both_workers_answer(server.url, log_path)
            statuses = _flood(server.url, secret)
    log = log_path.read_text()
    served_by = set(re.findall(r"pid=<?(\d+)>? /api/agent ", log))
    assert MEMORY_WARNING not in log

    # Both workers answered agent calls, yet together they let exactly LIMIT through.
    assert len(served_by) == 2, procs.tail(log_path)
    assert Counter(statuses) == {200: LIMIT, 429: CALLS - LIMIT}
    assert balance_of(owner, user) == 100 - LIMIT


def test_gunicorn_warns_when_workers_would_count_limits_apart(database_url, tmp_path: Path):
    """The misconfigured operator: 2 workers, counters in memory. gunicorn.conf.py says so."""
    log_path = tmp_path / "gunicorn.log"
    env = {
        "TOKENBILL_ENV": "development",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key",
    }
    with procs.gunicorn(
        "webapp:create_app()", env, log_path, workers=2, extra_args=("--no-control-socket",)
    ):
        pass
    assert MEMORY_WARNING in log_path.read_text()

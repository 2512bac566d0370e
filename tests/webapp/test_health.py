"""/healthz makes a real database round trip and answers within a second either way.

A load balancer waits about a second for a probe; the old probe went through the pool and took
its 30 s timeout to say 503 when PostgreSQL was down (issue 17).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from workshop.net import free_port


def _timed_get(app, path: str = "/healthz"):
    client = app.test_client()
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def test_healthz_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "packages": 3}


def test_healthz_answers_503_at_once_when_the_database_is_down(make_app):
    """Nothing listens on the port: a stopped PostgreSQL."""
    app = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/tokenbill")
    response, elapsed = _timed_get(app)
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    assert elapsed < 1.0


@contextmanager
def _silent_server() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake but whose server never says a word:
    a hung or overloaded PostgreSQL, or a firewall that swallows packets mid-way."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_healthz_answers_503_within_a_second_when_the_database_hangs(make_app):
    with _silent_server() as port:
        app = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/tokenbill")
        response, elapsed = _timed_get(app)
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "timeout"}
    assert elapsed < 1.0


def test_healthz_does_not_wait_for_a_busy_pool(make_app):
    """Every pooled connection is taken by slow requests: the probe still answers 200."""
    app = make_app(DATABASE_POOL_MAX=1)
    database = app.extensions["tokenbill_db"]
    database.open()
    database.pool.wait(timeout=10)
    with database.connection():
        response, elapsed = _timed_get(app)
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"
    assert elapsed < 1.0

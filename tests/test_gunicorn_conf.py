"""gunicorn.conf.py bounds what gunicorn parses before Flask; every production command uses it."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from workshop import procs

ROOT = Path(__file__).resolve().parent.parent


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        return conn.recv(1024)


def test_every_production_command_names_the_config():
    for path in ("Dockerfile", "docker-compose.yml", "scripts/run"):
        assert "gunicorn.conf.py" in (ROOT / path).read_text(), path


def test_gunicorn_refuses_header_floods_before_the_app(database_url, tmp_path):
    env = {
        "DATABASE_URL": database_url,
        "WEBHOOK_DATABASE_URL": database_url,
        "AUTH_DATABASE_URL": database_url,
        "SECRET_KEY": secrets.token_urlsafe(32),
    }
    with procs.gunicorn("webapp:create_app()", env, tmp_path / "g.log", workers=1) as server:
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(80))
        flood = raw_request(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert flood.startswith(b"HTTP/1.1 431")  # gunicorn alone allows 100 headers
        long_line = raw_request(
            server.url, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert long_line.startswith(b"HTTP/1.1 414")
        fine = raw_request(
            server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert fine.startswith(b"HTTP/1.1 200")

"""workshop.net: a free port is bindable; a served app answers, then its port is closed."""

from __future__ import annotations

import socket

import pytest
import requests
from flask import Flask

from workshop.net import free_port, serve_wsgi


def test_a_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_serve_wsgi_answers_until_the_block_ends() -> None:
    app = Flask(__name__)
    app.add_url_rule("/", "index", lambda: "hello")
    with serve_wsgi(app) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert requests.get(server.url, timeout=5).text == "hello"
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=5)

"""Run a Flask app behind a real threaded HTTP server, for tests that need real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

from workshop.net import serve_wsgi


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:<free port>; yields its base URL."""
    with serve_wsgi(app) as server:
        yield server.url

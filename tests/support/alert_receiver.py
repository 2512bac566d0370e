"""A local HTTP server that receives the low-balance alerts (the notifier's and the workers'
tests), answering 204, or 503 while ``fail_next`` counts down."""

from __future__ import annotations

import http.server
from collections.abc import Callable, Iterator

import pytest

from workshop.net import ServerThread


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, bytes]] = []
        self.fail_next = 0
        self.on_delivery: Callable[[], None] | None = None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.fail_next:
            self.server.fail_next -= 1
            self.send_response(503)
        else:
            if self.server.on_delivery:
                self.server.on_delivery()
            self.server.received.append((self.headers["Tokenbill-Signature"], body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    with ServerThread(server):
        yield server

"""Loopback plumbing the workshop and the tests share: a free port, a server in a thread.

One place for both, so that every local server (the emulator, the browser tour's app, the
tests' receivers, proxies and stubs) starts, answers and shuts down the same way.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any

from werkzeug.serving import make_server


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """Serve a ``socketserver`` server in a daemon thread; a context manager.

    ``url`` is ``http://host:port`` of the bound socket; leaving the block stops the server,
    closes its socket and waits for the thread.
    """

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        host, port = server.server_address[:2]  # type: ignore[misc]
        self.port: int = port
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_wsgi(app: Any, host: str = "127.0.0.1", port: int = 0) -> ServerThread:
    """A threaded WSGI server for ``app`` on host:port (0: a free port), not yet started."""
    return ServerThread(make_server(host, port, app, threaded=True))

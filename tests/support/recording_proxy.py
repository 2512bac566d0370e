"""A recording HTTP proxy to put between the stripe SDK and stripe-mock.

stripe-mock validates requests but answers with fixed fixtures (no metadata, one session id),
so tests cannot see what we sent from its answers. Pointing STRIPE_API_BASE at this proxy
records every request (method, path, headers, form body) and forwards it unchanged.

``unique_checkout_ids=True`` gives each created Checkout Session, Customer and PaymentIntent
its own id (stripe-mock always answers the same one): real Stripe ids are unique, and
api.record_checkout_session / api.record_stripe_customer refuse an id recorded for another
user. Like Stripe, a repeated Idempotency-Key gets the
id of its first answer. stripe-mock echoes the id on retrieve.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from workshop.net import ServerThread

FRESH_ID_PREFIXES = {
    "/v1/checkout/sessions": "cs_test_",
    "/v1/customers": "cus_test_",
    "/v1/payment_intents": "pi_test_",
}
HOP_BY_HOP = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class RecordingProxy:
    """A threaded proxy on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(self, upstream: str, *, unique_checkout_ids: bool = True) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.unique_checkout_ids = unique_checkout_ids
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._ids_by_key: dict[str, str] = {}
        # called with each request before it is forwarded (a test may hold it there)
        self.on_request: Callable[[RecordedRequest], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._serving = ServerThread(self._server)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with this method and path (query string ignored)."""
        return [r for r in self.requests if r.method == method and r.path.split("?")[0] == path]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def __enter__(self) -> RecordingProxy:
        self._serving.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._serving.stop()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _rewrite(
        self, method: str, path: str, status: int, body: bytes, idempotency_key: str | None
    ) -> bytes:
        prefix = FRESH_ID_PREFIXES.get(path.split("?")[0])
        if not (self.unique_checkout_ids and method == "POST" and prefix and status == 200):
            return body
        data = json.loads(body)
        with self._lock:
            fresh = f"{prefix}{uuid.uuid4().hex}"
            data["id"] = (
                self._ids_by_key.setdefault(idempotency_key, fresh) if idempotency_key else fresh
            )
        return json.dumps(data).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet in tests
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                form = dict(parse_qsl(body.decode(), keep_blank_values=True)) if body else {}
                if "?" in self.path and self.command == "GET":
                    form = dict(parse_qsl(self.path.split("?", 1)[1], keep_blank_values=True))
                recorded = RecordedRequest(self.command, self.path, headers, body, form)
                proxy._record(recorded)
                if proxy.on_request is not None:
                    proxy.on_request(recorded)

                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=30
                )
                try:
                    forward = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body or None, headers=forward)
                    response = upstream.getresponse()
                    payload = proxy._rewrite(
                        self.command,
                        self.path,
                        response.status,
                        response.read(),
                        self.headers.get("Idempotency-Key"),
                    )
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_POST = do_DELETE = _forward

        return Handler

"""A tiny OpenAI-compatible model server for tests: streams a scripted reply over real HTTP.

The app's real LLMAgent (pydantic-ai → openai SDK → httpx) talks to it exactly as it would
to a provider, so the metering is tested through the whole client stack. It records every
request body (the history sent, max_tokens) and can fail, stall or drip its parts.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from workshop.net import ServerThread

MODEL = "stub-model"


class ModelStub:
    """Serve ``POST /v1/chat/completions`` (stream=true) on 127.0.0.1:<free port>.

    parts: how many content chunks a reply has ("part 1 ", "part 2 ", ...);
    delay: seconds between chunks; fail_status: answer this HTTP error instead of a stream;
    stall_after: after this many parts, wait (until the client gives up or the stub closes);
    stalls: per-request stall points instead, {text in the last message: parts before stalling}.
    """

    def __init__(
        self,
        parts: int = 5,
        delay: float = 0.0,
        fail_status: int | None = None,
        stall_after: int | None = None,
        stalls: dict[str, int] | None = None,
    ) -> None:
        self.parts = parts
        self.delay = delay
        self.fail_status = fail_status
        self.stall_after = stall_after
        self.stalls = stalls or {}
        self._lock = threading.Lock()
        self._bodies: list[dict[str, Any]] = []
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._serving = ServerThread(self._server)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def app_config(self, **extra: Any) -> dict[str, Any]:
        """Settings that make the app's LLMAgent call this stub."""
        return {
            "LLM_MODEL": MODEL,
            "LLM_BASE_URL": self.base_url,
            "LLM_API_KEY": "sk-stub",
            **extra,
        }

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every chat-completions request so far."""
        with self._lock:
            return list(self._bodies)

    def reply(self) -> str:
        return "".join(f"part {i} " for i in range(1, self.parts + 1))

    def __enter__(self) -> ModelStub:
        self._serving.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._serving.stop()

    def _stall_at(self, body: dict[str, Any]) -> int | None:
        last = json.dumps((body.get("messages") or [{}])[-1].get("content"))
        for marker, parts in self.stalls.items():
            if marker in last:
                return parts
        return self.stall_after

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: the stream ends when the connection closes, like many SSE servers
            def log_message(self, format: str, *args: object) -> None:  # quiet in tests
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    stub._bodies.append(body)
                if stub.fail_status is not None:
                    payload = json.dumps({"error": {"message": "stub failure"}}).encode()
                    self.send_response(stub.fail_status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                stall_at = stub._stall_at(body)
                try:
                    for i in range(1, stub.parts + 1):
                        if stall_at is not None and i > stall_at:
                            stub._closing.wait(600)
                            return
                        self._event({"role": "assistant", "content": f"part {i} "}, None)
                        if stub.delay:
                            time.sleep(stub.delay)
                    self._event({}, "stop")
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return  # the app hung up (timeout, disconnect): like a provider would see

            def _event(self, delta: dict[str, Any], finish: str | None) -> None:
                chunk = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()

        return Handler

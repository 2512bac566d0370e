"""gunicorn settings for every way tokenbill is served (Dockerfile, compose, scripts/run).

gunicorn reads ./gunicorn.conf.py from its working directory (the repo root, /app in the
image); the commands also name it. Command-line flags (bind, workers, threads) still win.
Why these limits: the request line and headers are parsed before Flask sees anything, so they
are bounded here; bodies are bounded by Flask (MAX_CONTENT_LENGTH, refused from
Content-Length before reading, see webapp/security.py). on_starting warns a misconfigured
operator: rate-limit counters kept in memory (RATELIMIT_STORAGE_URI=memory://, the default)
are per worker process, so N workers let every limit through N times.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

limit_request_line = 4094  # bytes in "GET /path?query HTTP/1.1"
limit_request_fields = 50  # headers per request
limit_request_field_size = 8190  # bytes per header
timeout = 90  # a worker silent this long is restarted (agent calls time out at 60 s)
graceful_timeout = 30
keepalive = 5


def on_starting(server: Any) -> None:
    env_file = Path(__file__).resolve().parent / ".env"
    from_file = dotenv_values(env_file) if env_file.exists() else {}
    storage = os.environ.get("RATELIMIT_STORAGE_URI") or from_file.get("RATELIMIT_STORAGE_URI")
    storage = storage or "memory://"
    workers = server.cfg.workers
    if storage.startswith("memory://") and workers > 1:
        server.log.warning(
            "RATELIMIT_STORAGE_URI is memory:// with %d workers: each counts on its own, so every "
            "rate limit lets %d times its requests through; use shared storage "
            "(redis://host:6379/0) or one worker with threads",
            workers,
            workers,
        )

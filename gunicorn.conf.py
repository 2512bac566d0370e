"""gunicorn reads this file from its working directory (the repo root, /app in the image).

Settings stay on the command line; this only warns a misconfigured operator: rate-limit
counters kept in memory (RATELIMIT_STORAGE_URI=memory://, the default) are per worker
process, so N workers let every limit through N times.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dotenv import dotenv_values


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

"""Serve a Supabase Edge Function (db/edge-functions/<name>/index.ts) with the real Deno.

Deno comes from npm (db/edge-functions/package.json, installed by scripts/bootstrap.sh with
``npm ci``); its npm imports (stripe, postgres) are cached in .data/deno, so only the first run
downloads them. Each served function is a real process on a free loopback port, talking to
the real PostgreSQL of the test run.
"""

from __future__ import annotations

import functools
import os
import re
import selectors
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = ROOT / "db" / "edge-functions"
DENO = FUNCTIONS_DIR / "node_modules" / ".bin" / "deno"
DENO_DIR = ROOT / ".data" / "deno"
START_TIMEOUT = 120.0  # the very first start downloads the npm imports
LISTENING = re.compile(rb"Listening on (http://\S+?)/?\s")
# What the functions need and nothing more: sockets, their settings, the npm cache.
PERMISSIONS = ["--allow-net", "--allow-env", f"--allow-read={DENO_DIR}", "--no-prompt"]


def postgres_url(conninfo: str, **params: str) -> str:
    """A postgres:// URL (what npm:postgres takes) for a libpq conninfo string."""
    parts = conninfo_to_dict(conninfo)
    user = quote(str(parts.get("user", "postgres")), safe="")
    password = parts.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = parts.get("host", "127.0.0.1")
    if str(host).startswith("/"):
        raise ValueError("the Edge Function tests need a TCP PostgreSQL URL")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    url = f"postgres://{auth}@{host}:{parts.get('port', 5432)}/{parts['dbname']}"
    return f"{url}?{query}" if query else url


@functools.cache
def _npm_registry() -> str:
    """The registry npm uses here; Deno resolves npm: imports through the same one."""
    configured = os.environ.get("NPM_CONFIG_REGISTRY")
    if configured:
        return configured
    out = subprocess.run(
        ["npm", "config", "get", "registry"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


# Settings the functions read: never inherited from the developer's shell, only given.
FUNCTION_SETTINGS = ("TOKENBILL_", "SUPABASE_", "STRIPE_", "LLM_", "AGENT_", "DENO_SERVE_")


def deno_env(**settings: str) -> dict[str, str]:
    """This process's environment (proxy and CA settings included) without any function
    setting, plus Deno's own (cache in .data/deno, the npm registry, a free port) and
    ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FUNCTION_SETTINGS)}
    env.update(
        DENO_DIR=str(DENO_DIR),
        NPM_CONFIG_REGISTRY=_npm_registry(),
        NO_COLOR="1",
        DENO_NO_UPDATE_CHECK="1",
        DENO_SERVE_ADDRESS="tcp:127.0.0.1:0",
    )
    # Trust the machine's CA store as well as Deno's bundled roots, as npm and pip do: a
    # registry reached through a TLS-inspecting proxy is signed by a CA only the system knows.
    # (Without it Deno reads the store only when SSL_CERT_FILE happens to be set.)
    env.setdefault("DENO_TLS_CA_STORE", "mozilla,system")
    return {**env, **settings}


@dataclass
class Served:
    """A running function: its base URL and everything it printed so far."""

    url: str
    output: bytearray = field(default_factory=bytearray)

    def log(self) -> str:
        return self.output.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The output once it contains ``text``: the function may answer before the thread
        reading its pipe has seen the line it logged for that request."""
        wait_for(lambda: text in self.log(), timeout)
        return self.log()


@contextmanager
def serve_function(name: str, **settings: str) -> Iterator[Served]:
    """Run ``deno run`` on the function with these settings; stopped afterwards."""
    if not DENO.exists():
        raise RuntimeError(
            f"{DENO} is missing: run `npm ci` in {FUNCTIONS_DIR} (scripts/bootstrap.sh does)"
        )
    DENO_DIR.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(DENO), "run", "--frozen", *PERMISSIONS, f"{name}/index.ts"],
        cwd=FUNCTIONS_DIR,
        env=deno_env(**settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield _wait_listening(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes]) -> Served:
    """Read the output until Deno prints its address, then keep reading it in a thread."""
    assert proc.stdout is not None
    output = bytearray()
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
            match = LISTENING.search(output)
            if match:
                served = Served(match.group(1).decode(), output)
                threading.Thread(target=_pump, args=(proc, output), daemon=True).start()
                return served
    raise RuntimeError(
        f"deno did not start (exit {proc.poll()}):\n{output.decode(errors='replace')}"
    )


def _pump(proc: subprocess.Popen[bytes], output: bytearray) -> None:
    """Keep reading the function's log so a full pipe never blocks it."""
    assert proc.stdout is not None
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            output += chunk
    except (OSError, ValueError):
        pass
    finally:
        proc.stdout.close()

"""Liveness with a real database round trip, for load balancers and the run script.

The probe opens its own connection, outside the pool, under a hard time budget: a load
balancer needs an answer in about a second, not after the pool's 30 s wait, and a pool that
is busy serving real requests must neither delay the probe nor be drained by it. libpq (and
psycopg) round any connect timeout up to 2 s, so the budget is enforced with asyncio around an
async connection, which also cancels a connection attempt cleanly when time is up. The probes
run on one event loop thread per process: the view waits for the answer, never for the loop's
cleanup (a host name lookup stuck in a resolver thread cannot hold the answer back).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import psycopg
from flask import Blueprint, current_app, jsonify
from psycopg import sql

bp = Blueprint("health", __name__)

# Total time for connect + query; the answer (200 or 503) comes well within a second.
PROBE_BUDGET_SECONDS = 0.75

_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


def _probe_loop() -> asyncio.AbstractEventLoop:
    """The probes' event loop, started on first use in each process (threads don't survive
    gunicorn's fork)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop, _loop_pid = asyncio.new_event_loop(), os.getpid()
            thread = threading.Thread(target=_loop.run_forever, name="healthz-probe", daemon=True)
            thread.start()
        return _loop


async def _count_packages(url: str, role: str | None) -> int:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=2)
    async with conn:
        if role:
            await conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
        cur = await conn.execute("select count(*) from api.packages")
        row: Any = await cur.fetchone()
        return int(row[0])


async def _probe(url: str, role: str | None, budget: float) -> int:
    async with asyncio.timeout(budget):
        return await _count_packages(url, role)


@bp.get("/healthz")
def healthz():
    """200 when PostgreSQL answers and the migrations are applied, else 503 — within 1 s."""
    config = current_app.config
    if not config["DATABASE_URL"]:  # `flask run` without configuration
        return jsonify(status="unavailable", database="not configured"), 503
    probe = _probe(config["DATABASE_URL"], config["DATABASE_ROLE"] or None, PROBE_BUDGET_SECONDS)
    future = asyncio.run_coroutine_threadsafe(probe, _probe_loop())
    try:
        packages = future.result(timeout=PROBE_BUDGET_SECONDS + 0.1)
    except TimeoutError:
        future.cancel()
        return jsonify(status="unavailable", database="timeout"), 503
    except (psycopg.Error, OSError) as exc:
        return jsonify(status="unavailable", database=type(exc).__name__), 503
    return jsonify(status="ok", database="ok", packages=packages)

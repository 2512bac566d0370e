"""What a pool's connection sends to PostgreSQL, read from libpq's own protocol trace.

Counting round trips needs no stand-in: libpq (PQtrace) writes every message it exchanges with
the real server. A round trip is one client ``Sync`` (extended protocol: Parse/Bind/Execute)
or one client ``Query`` (simple protocol: BEGIN, COMMIT, the pool's empty liveness ping).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.pq import Trace

from webapp.db import Database

PING = ""  # the pool's liveness check sends an empty query
_PARSE = re.compile(r'^ "[^"]*" "(.*)" \d+', re.DOTALL)


def _round_trips(trace: str) -> list[str]:
    """The SQL of each round trip, in order, from a PQtrace log of the client's messages."""
    messages: list[list[str]] = []
    for line in trace.splitlines():
        if line.startswith(("F\t", "B\t")):
            messages.append(line.split("\t", 3))
        elif messages:  # a statement's text went on over several lines
            messages[-1][-1] += "\n" + line
    found, parsed = [], ""
    for direction, _length, kind, *rest in messages:
        text = rest[0] if rest else ""
        if direction != "F":
            continue
        if kind == "Query":
            found.append(text.strip()[1:-1])
        elif kind == "Parse":
            match = _PARSE.match(text)
            parsed = match.group(1) if match else text
        elif kind == "Sync":
            found.append(" ".join(parsed.split()))
            parsed = ""
    return found


@contextmanager
def round_trips(db: Database) -> Iterator[list[str]]:
    """Trace the pool's only connection (build the app with DATABASE_POOL_MAX=1) while the
    block runs; the yielded list is filled at exit with each round trip's SQL, whitespace
    collapsed (``PING`` for the liveness check). Statements are not prepared meanwhile, so
    each one shows its text."""
    assert db.pool.max_size == 1, "trace a pool of one connection (DATABASE_POOL_MAX=1)"
    found: list[str] = []
    conn = db.pool.getconn()
    try:
        threshold = conn.prepare_threshold
        conn.prepare_threshold = None
    finally:
        db.pool.putconn(conn)
    with tempfile.TemporaryFile("w+") as log:
        fd = os.dup(log.fileno())  # libpq owns this one (fdopen) until untrace
        conn.pgconn.trace(fd)
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        try:
            yield found
        finally:
            conn.pgconn.untrace()  # flushes the stream
            os.close(fd)
            conn.prepare_threshold = threshold
            log.seek(0)
            found.extend(_round_trips(log.read()))

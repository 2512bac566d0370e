"""The ledger benchmark's fourth part: the plans api.consume's statements really use.

auto_explain captures the plans inside the function; the history and replay lookups are
EXPLAINed directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from workshop.bench_common import (
    connect_owner,
    format_table,
)
from workshop.bench_ledger_setup import (
    CONSUME_SQL,
    REPLAY_LOOKUP_SQL,
    Options,
    Out,
    ScaleDb,
    plan_nodes,
)


def ledger_count_as_app(conn: psycopg.Connection[Any]) -> int:
    """Total ledger rows, read the way the app can (through api.ledger_entries)."""
    row = conn.execute("select count(*) from api.ledger_entries").fetchone()
    assert row is not None
    return int(row[0])


class PlanCapture:
    """A connection acting as ``role`` whose plans auto_explain reports on demand.

    Why auto_explain rather than EXPLAIN: it shows the plans of the statements inside
    PL/pgSQL functions and triggers, and the plan a prepared statement really ran (custom or
    generic), which is what the app's pooled connections run after five executions.
    Needs a superuser URL (LOAD and auto_explain settings), which the benchmark has.
    """

    SETTINGS: ClassVar[dict[str, str]] = {
        "log_nested_statements": "on",
        "log_analyze": "on",
        "log_buffers": "on",
        "log_timing": "off",
        "log_format": "json",
        "log_level": "notice",
        "log_min_duration": "-1",
    }

    def __init__(self, url: str, role: str | None = "tokenbill_app") -> None:
        self.captured: list[str] = []
        self.conn = connect_owner(url)
        self.conn.execute("load 'auto_explain'")
        self.conn.add_notice_handler(lambda d: self.captured.append(d.message_primary or ""))
        for name, value in self.SETTINGS.items():
            self._set(name, value)
        self.role = role  # None: the owner, for internal functions (api.consume since 0013)
        self._act_as_role()

    def _act_as_role(self) -> None:
        if self.role:
            self.conn.execute(sql.SQL("set role {}").format(sql.Identifier(self.role)))

    def _set(self, name: str, value: str) -> None:
        self.conn.execute(
            sql.SQL("select set_config({}, {}, false)").format(f"auto_explain.{name}", value)
        )

    def execute(self, query: str, params: Sequence[Any]) -> list[Any]:
        """Run a statement as the app would; fetch its rows."""
        return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def plans(self, query: str, params: Sequence[Any]) -> list[tuple[str, list[str]]]:
        """Run the statement once more with auto_explain on; (statement, plan nodes) each."""
        self.conn.execute("reset role")
        self._set("log_min_duration", "0")
        self._act_as_role()
        self.captured.clear()
        try:
            self.execute(query, params)
        finally:
            self.conn.execute("reset role")
            self._set("log_min_duration", "-1")
            self._act_as_role()
        found = []
        for message in self.captured:
            start = message.find("{")
            if start >= 0:
                doc = json.loads(message[start:])
                text = " ".join(doc.get("Query Text", "").split())
                found.append((text, plan_nodes(doc["Plan"])))
        return found

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PlanCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def consume_plans(url: str, user_id: uuid.UUID) -> list[tuple[str, list[str]]]:
    """The plans of every statement api.consume runs: a new request, then its replay.

    Seven warm-up calls first: PL/pgSQL may switch to a generic plan after five executions,
    and the generic plan is what a busy server runs.
    """
    tag = uuid.uuid4().hex[:8]
    with PlanCapture(url, role=None) as pc:
        for i in range(7):
            pc.execute(CONSUME_SQL, [user_id, f"explain-{tag}-{i}"])
        found = pc.plans(CONSUME_SQL, [user_id, f"explain-{tag}-new"])
        return found + pc.plans(CONSUME_SQL, [user_id, f"explain-{tag}-new"])  # replay


def run_explain(db: ScaleDb, opts: Options, out: Out) -> None:
    """Print the plans consume's statements use, and the replay lookup's EXPLAIN ANALYZE."""
    user = db.heavy or db.users[0]
    if not db.loads:  # run on its own: give the account a ledger and tokens first
        db.load([(user, 100)])
    plans = consume_plans(db.url, user)
    seen: dict[str, list[str]] = {}
    for text, nodes in plans:
        if text.startswith("select ok from api.consume"):
            continue  # the top-level call itself: a Function Scan over the function's result
        seen.setdefault(text, nodes)
    rows = [[text[:90], " > ".join(nodes)] for text, nodes in seen.items()]
    seq = sum(1 for nodes in seen.values() for n in nodes if n.startswith("Seq Scan"))
    out("## Plans of api.consume's statements (auto_explain, after warm-up)\n")
    out(format_table(["statement", "plan"], rows))
    out("")
    out(f"sequential scans in api.consume: {seq}\n")

    with connect_owner(db.url) as conn:
        row = conn.execute(
            "select request_id from tokenbill.ledger where user_id = %s and kind = 'consumption'"
            " order by id desc limit 1",
            [user],
        ).fetchone()
        request_id = row[0] if row else "none"
        conn.execute(f"prepare replay_lookup (uuid, text) as {REPLAY_LOOKUP_SQL}")  # type: ignore[arg-type]
        conn.execute("set plan_cache_mode = force_generic_plan")
        explain = sql.SQL("explain (analyze, buffers) execute replay_lookup({}, {})")
        plan = conn.execute(explain.format(str(user), request_id)).fetchall()
    out("Replay lookup, generic plan, EXPLAIN (ANALYZE, BUFFERS):\n")
    out("```")
    out(REPLAY_LOOKUP_SQL)
    out("\n".join(r[0] for r in plan))
    out("```\n")

"""Plans under a statistics tie: what a function's inner statements really read.

A fresh database whose statistics say every user has one conversation of five exchanges (the
shape of most accounts), then one user piles up 3,000 exchanges in each of two conversations,
unknown to the statistics. A conversation filter on (conversation, user) can then be served
from exchanges_pkey (every one of the user's 6,000 entries) or by a bitmap of the whole
conversation, sorted. auto_explain shows what each call of a function's statement read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.support.agents import begin_request as begin
from tests.support.upgrade import funded_user

BIG = 3000  # exchanges in each of the user's two long conversations


def tied_conversation(owner: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    """(user, conversation) on a migrated database: the conversation's first exchange is a
    real reservation (the reserve is still open), then BIG answered ones behind the
    statistics' back, and as many in the user's other conversation."""
    owner.execute("alter table tokenbill.exchanges set (autovacuum_enabled = off)")
    user = funded_user(owner, 100)
    conversation = begin(owner, user, "first")["conversation_id"]
    owner.execute(
        "with u as (insert into tokenbill.users (email, password_hash)"
        "  select 'many' || g || '@example.test', 'x' from generate_series(1, 200) g"
        "  returning id),"
        " c as (insert into tokenbill.conversations (user_id, title)"
        "  select id, 'one' from u returning id, user_id)"
        " insert into tokenbill.exchanges (conversation_id, user_id, request_id, prompt,"
        "  reply, reply_status, cost)"
        " select c.id, c.user_id, 'r' || g, 'p', 'r', 'done', 1"
        "  from c, generate_series(1, 5) g"
    )
    owner.execute("analyze tokenbill.exchanges")
    other = owner.execute(
        "insert into tokenbill.conversations (user_id, title) values (%s, 'other') returning id",
        [user],
    ).fetchone()["id"]  # type: ignore[index]
    for target, tag in ((other, "other"), (conversation, "big")):
        owner.execute(
            "insert into tokenbill.exchanges (conversation_id, user_id, request_id, prompt,"
            " reply, reply_status, cost)"
            " select %s, %s, %s || g, 'p', 'r', 'done', 1 from generate_series(1, %s) g",
            [target, user, tag, BIG],
        )
    return user, conversation


@contextmanager
def explaining(url: str) -> Iterator[tuple[psycopg.Connection[Any], list[str]]]:
    """A session acting as tokenbill_app whose every statement, nested ones included, leaves
    its executed plan (auto_explain, JSON, with row counts) in the list yielded beside it. One
    session, so that plpgsql's first (custom) plans and its later generic one are all seen."""
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("load 'auto_explain'")  # as the owner; then act as the app's role
        for name, value in (
            ("log_nested_statements", "on"),
            ("log_analyze", "on"),
            ("log_timing", "off"),
            ("log_format", "json"),
            ("log_level", "notice"),
            ("log_min_duration", "0"),
        ):
            conn.execute("select set_config(%s, %s, false)", [f"auto_explain.{name}", value])
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("set role tokenbill_app")
        yield conn, notices


def inner_plans(notices: list[str], function: str) -> list[dict[str, Any]]:
    """The plans of the statements inside ``function``, from explaining()'s notices."""
    docs = [json.loads(n[n.find("{") :]) for n in notices if "{" in n]
    return [doc["Plan"] for doc in docs if f"{function}(" not in doc["Query Text"]]


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def index_entries_read(plan: dict[str, Any], index: str) -> int:
    return sum(
        n["Actual Rows"] * n.get("Actual Loops", 1)
        for n in plan_nodes(plan)
        if n.get("Index Name") == index
    )


def assert_reads_only_by(plan: dict[str, Any], index: str, at_most: int) -> None:
    """Only ``index``, in its order (no bitmap, no sequential scan), at most ``at_most``
    entries of it."""
    nodes = plan_nodes(plan)
    assert {n.get("Index Name") for n in nodes} - {None} == {index}, json.dumps(plan)
    assert not {n["Node Type"] for n in nodes} & {"Bitmap Heap Scan", "Seq Scan"}, json.dumps(plan)
    assert index_entries_read(plan, index) <= at_most, json.dumps(plan)

"""0018's leaner hot path keeps its guarantees where it takes fewer steps.

The adversary for api.consume is a client firing the same request id twice at the same
moment: the twin that arrives while the first is still open must charge nothing and answer
'replayed' once the first commits (this guards any future lock-free consume too). The
low-balance alert moved from a trigger into tokenbill.post_entry: the writer must still raise
it on a crossing only, and a duplicate consumption row must still be refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import audit, balance_of
from tests.support.consume import twin_while_first_is_open


def test_a_twin_waiting_on_the_row_is_replayed_not_charged(
    database_url: str, owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    user = make_user(balance=5)
    first, result = twin_while_first_is_open(database_url, user, 2)
    assert first["ok"] and first["balance"] == 3  # charged, not committed: the twin cannot see it
    assert result == {"ok": True, "balance": 3, "reason": "replayed"}
    assert balance_of(owner, user) == 3
    assert (
        owner.execute(
            "select count(*) as n from tokenbill.ledger where user_id = %s and request_id = 'twin'",
            [user],
        ).fetchone()["n"]
        == 1
    )
    assert audit(owner) == []


def test_post_entry_records_the_alert_on_a_crossing_only(
    owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    user = make_user(balance=12)  # threshold 10 by default
    alerts = "select count(*) as n from tokenbill.low_balance_alerts where user_id = %s"
    owner.execute("select tokenbill.post_entry(%s, 'consumption', -1, p_request_id => 'a')", [user])
    assert owner.execute(alerts, [user]).fetchone()["n"] == 0  # 11: not below
    owner.execute("select tokenbill.post_entry(%s, 'consumption', -2, p_request_id => 'b')", [user])
    assert owner.execute(alerts, [user]).fetchone()["n"] == 1  # 11 -> 9: crossed
    owner.execute("select tokenbill.post_entry(%s, 'consumption', -1, p_request_id => 'c')", [user])
    assert owner.execute(alerts, [user]).fetchone()["n"] == 1  # already below: no new alert
    assert audit(owner) == []


def test_a_duplicate_consumption_row_is_refused_by_the_writer(
    owner: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    user = make_user(balance=5)
    owner.execute("select tokenbill.post_entry(%s, 'consumption', -1, p_request_id => 'd')", [user])
    with pytest.raises(psycopg.errors.UniqueViolation):
        owner.execute(
            "select tokenbill.post_entry(%s, 'consumption', -1, p_request_id => 'd')", [user]
        )
    assert balance_of(owner, user) == 4

"""0027: a key's use is written at most once a minute, so an API request's key lookup is a read.

Before, api.user_for_api_key updated last_used_at on every call: every request authenticated
by a key paid a row update and a durable commit (a WAL flush) before any work, and a SQL
function with SET re-planned that UPDATE on each call. Adversaries: a revoked key must be
refused from the moment the revoke commits (a lookup that only reads must still see it); a
forged or unknown hash gets no user and writes nothing.
"""

from __future__ import annotations

import psycopg

from tests.support.agents import create_key

LOOKUP = "select api.user_for_api_key(%s) as user_id"


def _hash(owner: psycopg.Connection, user) -> str:
    return owner.execute(
        "select key_hash from tokenbill.api_keys where user_id = %s", [user]
    ).fetchone()["key_hash"]


def _last_used(owner: psycopg.Connection, user):
    return owner.execute(
        "select last_used_at from tokenbill.api_keys where user_id = %s", [user]
    ).fetchone()["last_used_at"]


def test_a_use_within_the_minute_writes_nothing(owner, app_conn, make_user) -> None:
    user = make_user()
    create_key(owner, user)
    key_hash = _hash(owner, user)
    assert app_conn.execute(LOOKUP, [key_hash]).fetchone()["user_id"] == user
    first = _last_used(owner, user)
    assert first is not None  # the first use is recorded
    xmin = owner.execute(
        "select xmin::text as x from tokenbill.api_keys where user_id = %s", [user]
    ).fetchone()["x"]
    for _ in range(3):
        assert app_conn.execute(LOOKUP, [key_hash]).fetchone()["user_id"] == user
    again = owner.execute(
        "select xmin::text as x, last_used_at from tokenbill.api_keys where user_id = %s", [user]
    ).fetchone()
    assert (again["x"], again["last_used_at"]) == (xmin, first)  # no new row version


def test_a_use_a_minute_later_is_recorded(owner, app_conn, make_user) -> None:
    user = make_user()
    create_key(owner, user)
    owner.execute(
        "update tokenbill.api_keys set last_used_at = now() - interval '61 seconds'"
        " where user_id = %s",
        [user],
    )
    stale = _last_used(owner, user)
    assert app_conn.execute(LOOKUP, [_hash(owner, user)]).fetchone()["user_id"] == user
    assert _last_used(owner, user) > stale


def test_a_revoked_or_unknown_key_gets_no_user(owner, app_conn, make_user) -> None:
    user = make_user()
    create_key(owner, user)
    key_hash = _hash(owner, user)
    assert app_conn.execute(LOOKUP, [key_hash]).fetchone()["user_id"] == user
    owner.execute("update tokenbill.api_keys set revoked_at = now() where user_id = %s", [user])
    assert app_conn.execute(LOOKUP, [key_hash]).fetchone()["user_id"] is None
    assert app_conn.execute(LOOKUP, ["0" * 64]).fetchone()["user_id"] is None

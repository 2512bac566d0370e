"""Every api function refuses junk with the project's own SQLSTATEs.

The adversary is any caller of the contract — a page that forgot a check, an Edge Function,
a compromised app role — sending NULLs, empty or oversized text, negative numbers, unknown
ids, JSON of the wrong shape. The answer must be a TB code (TB003 bad argument, TB002
unknown id, ...) or a result, never PostgreSQL's own error: the web app maps anything but
a TB code to 500, "a bug of ours" (0035 fixed the four functions this sweep found).
Functions come from the catalog — those of the group roles' allow-lists and the owner-only
ones the definer functions call — so a new one is swept without being listed here; a new
argument type fails the sweep until it gets its junk below.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

# per argument type: a valid-looking value first (the others' value while one is junk)
JUNK: dict[str, list[Any]] = {
    "text": ["x", None, "", "é" * 5000],
    "integer": [1, None, -1, 0, 2147483647],
    "bigint": [1, None, -1, 0],
    "uuid": [str(uuid.uuid4()), None],
    "boolean": [True, None],
    "jsonb": [
        '{"id": "evt_junk", "type": "x"}',
        None,
        "{}",
        "[]",
        '"x"',
        '{"id": 5}',
        '{"id": "evt_junk_2", "livemode": "x", "data": []}',
    ],
    "timestamp with time zone": ["2026-01-01", None, "1970-01-01"],
    "inet": ["127.0.0.1", None],
}


def swept_functions(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.execute(
        """select p.proname as name, p.oid::regprocedure::text as signature,
                  array(select format_type(t, null) from unnest(p.proargtypes) t) as types
             from pg_proc p join pg_namespace n on n.oid = p.pronamespace
            where n.nspname = 'api' and p.prokind = 'f'
            order by 2"""
    ).fetchall()


def calls(types: list[str]) -> list[list[Any]]:
    """The valid-looking call, then each argument in turn replaced by each of its junk."""
    base = [JUNK[t][0] for t in types]
    out = [base]
    for i, t in enumerate(types):
        out += [[*base[:i], junk, *base[i + 1 :]] for junk in JUNK[t][1:]]
    return out


def test_the_sweep_covers_the_allow_lists_and_the_internals(owner) -> None:
    names = {f["name"] for f in swept_functions(owner)}
    # a sample of each role's and of the owner-only ones, so an empty catalog query cannot
    # pass the sweep below
    sample = {"register_user", "begin_agent_request", "handle_stripe_event",
              "admin_adjust_balance", "claim_alert_notifications", "expire_agent_holds",
              "user_credentials", "consume", "grant_for_payment", "revoke_for_dispute"}  # fmt: skip
    assert sample <= names


def test_no_junk_argument_gets_a_postgresql_error(owner) -> None:
    refused: list[str] = []
    for fn in swept_functions(owner):
        missing = [t for t in fn["types"] if t not in JUNK]
        assert not missing, f"{fn['signature']}: give {missing} junk values in JUNK"
        placeholders = ", ".join(f"%s::{t}" for t in fn["types"])
        for args in calls(fn["types"]):
            try:
                with owner.transaction(force_rollback=True):
                    owner.execute(f"select * from api.{fn['name']}({placeholders})", args)
            except psycopg.Error as exc:
                if not (exc.sqlstate or "").startswith("TB"):
                    shown = [a if a is None or len(str(a)) < 40 else "<long>" for a in args]
                    refused.append(f"{fn['signature']} {shown}: {exc.sqlstate} {exc}")
    assert refused == [], "\n".join(refused)


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("select api.create_api_key(%s, '', 'p', 'h')", [None]),
        ("select api.register_user('not-an-address', 'hash')", []),
        ("select * from api.claim_alert_notifications(-1)", []),
        ("select api.record_stripe_event_failure('{}', 'boom')", []),
    ],
)
def test_the_four_0035_fixed_are_tb003(owner, sql, args) -> None:
    with pytest.raises(psycopg.Error) as info:
        owner.execute(sql, args)
    assert info.value.sqlstate == "TB003"

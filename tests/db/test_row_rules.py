"""The row rules of the ledger and of conversations, whatever writes the row (0036).

The adversary is a writer with a bug, or an owner session typing SQL by hand: the api
functions never write a bad row, so the rules are checked here by writing rows directly as
the owner, each in a transaction rolled back. The exchange rules have their own table in
test_lean_agent_request.py."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.support.agents import begin_request, settle_request
from tests.support.upgrade import migrate_before, migrations_below
from webapp.ops import migrate

# PAYMENT is no payment's id (ids count up from 1): a purchase row for a real payment that
# another test granted in this database would trip ledger_purchase_once instead of the rule.
REQUEST, PAYMENT, ACTOR = "r-1", 2**62, "00000000-0000-4000-8000-000000000001"

# kind, delta, request id, payment id, actor, reason
LEDGER_OK = {
    "consumption": ("consumption", -1, REQUEST, None, None, None),
    "reserve": ("reserve", -3, REQUEST, None, None, None),
    "consumption refund": ("consumption_refund", 1, REQUEST, None, None, None),
    "release": ("release", 2, REQUEST, None, None, None),
    "settle of nothing": ("settle", 0, REQUEST, None, None, None),
    "settle": ("settle", 1, REQUEST, None, None, None),
    "purchase": ("purchase", 100, None, PAYMENT, None, None),
    "clawback reversal": ("clawback_reversal", 100, None, PAYMENT, None, None),
    "clawback": ("clawback", -100, None, PAYMENT, None, None),
    "admin credit": ("admin_adjustment", 5, None, None, ACTOR, "goodwill"),
    "admin debit": ("admin_adjustment", -5, None, None, ACTOR, "correction"),
}
LEDGER_BREAKS = {
    "consumption as a credit": ("consumption", 1, REQUEST, None, None, None),
    "consumption of nothing": ("consumption", 0, REQUEST, None, None, None),
    "consumption without a request": ("consumption", -1, None, None, None, None),
    "reserve as a credit": ("reserve", 3, REQUEST, None, None, None),
    "reserve without a request": ("reserve", -3, None, None, None, None),
    "refund as a debit": ("consumption_refund", -1, REQUEST, None, None, None),
    "release of nothing": ("release", 0, REQUEST, None, None, None),
    "release without a request": ("release", 2, None, None, None, None),
    "settle as a debit": ("settle", -1, REQUEST, None, None, None),
    "settle without a request": ("settle", 0, None, None, None, None),
    "purchase as a debit": ("purchase", -100, None, PAYMENT, None, None),
    "purchase without a payment": ("purchase", 100, None, None, None, None),
    "reversal without a payment": ("clawback_reversal", 100, None, None, None, None),
    "clawback as a credit": ("clawback", 100, None, PAYMENT, None, None),
    "clawback without a payment": ("clawback", -100, None, None, None, None),
    "admin adjustment of nothing": ("admin_adjustment", 0, None, None, ACTOR, "x"),
    "admin adjustment without an admin": ("admin_adjustment", 5, None, None, None, "x"),
    "admin adjustment without a reason": ("admin_adjustment", 5, None, None, ACTOR, None),
    "admin adjustment with a blank reason": ("admin_adjustment", 5, None, None, ACTOR, "  "),
}


@pytest.fixture
def rolled_back(owner: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The owner's connection inside a transaction that is rolled back afterwards."""
    with owner.transaction(force_rollback=True):
        yield owner


def _write_entry(conn: psycopg.Connection, row: tuple) -> None:
    conn.execute(
        "insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id,"
        " payment_id, actor_id, reason) values (%s, %s, %s, 0, %s, %s, %s, %s)",
        [uuid.uuid4(), *row],
    )


@pytest.mark.parametrize("row", LEDGER_OK.values(), ids=LEDGER_OK.keys())
def test_every_kind_of_ledger_entry_is_accepted(rolled_back: psycopg.Connection, row) -> None:
    _write_entry(rolled_back, row)


@pytest.mark.parametrize("row", LEDGER_BREAKS.values(), ids=LEDGER_BREAKS.keys())
def test_every_ledger_rule_is_checked(rolled_back: psycopg.Connection, row) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        _write_entry(rolled_back, row)
    assert refused.value.diag.constraint_name == "ledger_entry_valid"


@pytest.mark.parametrize(
    "statement",
    [
        "insert into tokenbill.conversations (user_id, title) values (%s, '')",
        "insert into tokenbill.conversations (user_id, title) values (%s, repeat('t', 201))",
        "update tokenbill.conversations set title = '' where user_id = %s",
        "update tokenbill.conversations set title = repeat('t', 201) where user_id = %s",
    ],
    ids=["insert empty", "insert too long", "rename empty", "rename too long"],
)
def test_a_conversation_title_is_1_to_200_characters(
    rolled_back: psycopg.Connection, make_user: Callable[..., uuid.UUID], statement: str
) -> None:
    user = make_user()
    rolled_back.execute(
        "insert into tokenbill.conversations (user_id, title) values (%s, repeat('t', 200))",
        [user],
    )
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        rolled_back.execute(statement, [user])
    assert refused.value.diag.constraint_name == "conversations_title_check"


def test_a_request_with_a_prompt_stored_out_of_line_settles(
    owner: psycopg.Connection, app_conn: psycopg.Connection, make_user: Callable[..., uuid.UUID]
) -> None:
    """The exchange rule reads the whole row, TOASTed prompt included, on every update."""
    user = make_user(balance=50)
    prompt = secrets.token_hex(9600)  # 19,200 characters that do not compress below 2 kB
    assert begin_request(app_conn, user, "big", prompt)["outcome"] == "started"
    stored = owner.execute(
        "select pg_column_size(prompt) as size from tokenbill.exchanges"
        " where user_id = %s and request_id = 'big'",
        [user],
    ).fetchone()
    assert stored["size"] > 2000
    assert settle_request(app_conn, user, "big", "done", "ok", len(prompt))["status"] == "settled"


def test_no_rule_is_left_unvalidated(owner: psycopg.Connection) -> None:
    """0036 added the row rules NOT VALID; 0038 checked every existing row against them."""
    unvalidated = owner.execute(
        "select conrelid::regclass::text as t, conname from pg_constraint"
        " where connamespace = 'tokenbill'::regnamespace and not convalidated"
    ).fetchall()
    assert unvalidated == []


def test_the_rules_are_validated_while_a_writer_holds_the_ledger(
    empty_db: str, tmp_path: Path
) -> None:
    """0038 scans the ledger and the exchanges without the lock that would stop the writers:
    it runs to its end while a charge's transaction is still open (a lock it had to wait for
    would time out)."""
    migrate_before(empty_db, tmp_path, "0038")
    with psycopg.connect(empty_db) as writer:  # a transaction, left open below
        writer.execute(
            "insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id)"
            " values (gen_random_uuid(), 'consumption', -1, 0, 'open')"
        )
        impatient = make_conninfo(empty_db, options="-c lock_timeout=2000")
        # 0038 alone: what later migrations do under a writer is their own tests' business
        assert migrate.upgrade(impatient, migrations_below(tmp_path, "0039")) == ["0038"]
        writer.commit()
    with psycopg.connect(empty_db) as conn:
        validated = conn.execute(
            "select bool_and(convalidated) from pg_constraint"
            " where conname in ('exchanges_valid', 'ledger_entry_valid')"
        ).fetchone()
    assert validated == (True,)

"""api.consume / api.release: atomic, never overdrawn, idempotent per request id.

Since 0014 the agent path reserves and settles holds instead, and the web app's role may no
longer call these: they are the ledger primitives left to operators and benchmarks, so these
tests call them as the database owner.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.conftest import audit, balance_of, connect_owner


def _drain(database_url: str, jobs: list[tuple[uuid.UUID, str, int]], threads: int):
    """Run consume for every job from `threads` concurrent connections; return results."""
    lock = threading.Lock()
    pending = list(jobs)
    results: list[tuple[str, int, bool]] = []

    def worker() -> None:
        with connect_owner(database_url) as conn:
            while True:
                with lock:
                    if not pending:
                        return
                    user_id, request_id, cost = pending.pop()
                row = conn.execute(
                    "select * from api.consume(%s, %s, %s)", [user_id, request_id, cost]
                ).fetchone()
                with lock:
                    results.append((request_id, cost, row["ok"]))

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return results


def test_64_threads_spend_exactly_the_balance(database_url, owner, make_user):
    user = make_user(balance=100)
    jobs = [(user, f"req-{i}", 1) for i in range(150)]
    results = _drain(database_url, jobs, threads=64)

    assert sum(ok for _, _, ok in results) == 100
    assert balance_of(owner, user) == 0
    rows = owner.execute(
        "select count(*) as n from api.ledger_entries where user_id = %s and kind = 'consumption'",
        [user],
    ).fetchone()
    assert rows["n"] == 100
    assert audit(owner) == []


def test_random_costs_never_overdraw(database_url, owner, make_user):
    rng = random.Random(20261125)
    user = make_user(balance=100)
    jobs = [(user, f"cost-{i}", rng.randint(1, 7)) for i in range(120)]
    results = _drain(database_url, jobs, threads=64)

    spent = sum(cost for _, cost, ok in results if ok)
    final = balance_of(owner, user)
    assert final >= 0
    assert spent + final == 100
    # Balances only go down, so every refused request cost more than what is left now.
    assert all(cost > final for _, cost, ok in results if not ok)
    ledger_spent = owner.execute(
        "select -sum(delta) as s from api.ledger_entries"
        " where user_id = %s and kind = 'consumption'",
        [user],
    ).fetchone()["s"]
    assert ledger_spent == spent
    assert audit(owner) == []


def test_same_request_id_from_10_threads_charges_once(database_url, owner, make_user):
    user = make_user(balance=5)
    results = _drain(database_url, [(user, "same-request", 1)] * 10, threads=10)

    assert all(ok for _, _, ok in results)
    assert balance_of(owner, user) == 4
    n = owner.execute(
        "select count(*) as n from api.ledger_entries"
        " where user_id = %s and request_id = 'same-request'",
        [user],
    ).fetchone()["n"]
    assert n == 1


def test_replay_returns_the_first_result(owner, make_user):
    user = make_user(balance=3)
    first = owner.execute("select * from api.consume(%s, 'r1', 2)", [user]).fetchone()
    again = owner.execute("select * from api.consume(%s, 'r1', 2)", [user]).fetchone()
    assert first == {"ok": True, "balance": 1, "reason": None}
    assert again == {"ok": True, "balance": 1, "reason": "replayed"}


def test_request_ids_are_per_user(owner, make_user):
    alice, bob = make_user(balance=1), make_user(balance=1)
    a = owner.execute("select * from api.consume(%s, 'shared-id')", [alice]).fetchone()
    b = owner.execute("select * from api.consume(%s, 'shared-id')", [bob]).fetchone()
    assert a["reason"] is None and b["reason"] is None
    assert balance_of(owner, alice) == balance_of(owner, bob) == 0


def test_insufficient_balance_is_refused_and_charges_nothing(owner, make_user):
    user = make_user(balance=2)
    row = owner.execute("select * from api.consume(%s, 'big', 3)", [user]).fetchone()
    assert row == {"ok": False, "balance": 2, "reason": "insufficient_tokens"}
    assert balance_of(owner, user) == 2
    # a refused request can be retried once the user has tokens
    ok = owner.execute("select * from api.consume(%s, 'big', 2)", [user]).fetchone()
    assert ok["ok"] is True and ok["balance"] == 0


@pytest.mark.parametrize(
    ("request_id", "cost"), [(None, 1), ("", 1), ("x" * 201, 1), ("ok", 0), ("ok", -1)]
)
def test_bad_arguments_raise_tb003(owner, make_user, request_id, cost):
    user = make_user(balance=5)
    with pytest.raises(psycopg.Error) as info:
        owner.execute("select * from api.consume(%s, %s, %s)", [user, request_id, cost])
    assert info.value.sqlstate == "TB003"


def test_unknown_user_raises_tb002(owner):
    with pytest.raises(psycopg.Error) as info:
        owner.execute("select * from api.consume(%s, 'r')", [uuid.uuid4()])
    assert info.value.sqlstate == "TB002"


def test_release_gives_tokens_back_once(owner, make_user: Callable[..., uuid.UUID]):
    user = make_user(balance=3)
    owner.execute("select * from api.consume(%s, 'agent-fail', 2)", [user])
    first = owner.execute("select * from api.release(%s, 'agent-fail')", [user]).fetchone()
    second = owner.execute("select * from api.release(%s, 'agent-fail')", [user]).fetchone()
    missing = owner.execute("select * from api.release(%s, 'never')", [user]).fetchone()

    assert first == {"status": "released", "balance": 3}
    assert second == {"status": "already_released", "balance": 3}
    assert missing == {"status": "not_found", "balance": 3}
    kinds = [
        r["kind"]
        for r in owner.execute(
            "select kind from api.ledger_entries"
            " where user_id = %s and request_id = 'agent-fail' order by id",
            [user],
        )
    ]
    assert kinds == ["consumption", "consumption_refund"]
    assert audit(owner) == []


def test_concurrent_release_refunds_once(database_url, owner, make_user):
    user = make_user(balance=1)
    with connect_owner(database_url) as conn:
        conn.execute("select * from api.consume(%s, 'rel')", [user])

    def release() -> str:
        with connect_owner(database_url) as conn:
            return conn.execute("select status from api.release(%s, 'rel')", [user]).fetchone()[
                "status"
            ]

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: release(), range(10)))
    assert statuses.count("released") == 1
    assert balance_of(owner, user) == 1


def test_the_app_role_may_no_longer_call_them(app_conn, make_user):
    user = make_user(balance=1)
    for statement in ("select api.consume(%s, 'x')", "select api.release(%s, 'x')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute(statement, [user])
    assert balance_of(app_conn, user) == 1

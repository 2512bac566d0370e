"""The HTTP benchmark at a tiny size, and the bench-only control route's boundaries.

Behaviour only (no timing): the report has the rows the docs rely on, every webhook was a real
grant, the control route answers like /api/agent without charging, and the production app
does not have it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import balance_of
from webapp import create_app
from webapp.api_auth import new_api_key
from webapp.db import close_app
from workshop import bench_http
from workshop.bench_app import (
    ROUND_TRIPS_PATH,
    UNBILLED_PATH,
    VERIFY_ONLY_PATH,
    create_bench_app,
)
from workshop.bench_common import parse_tables


def _rules(app: Any) -> set[str]:
    return {rule.rule for rule in app.url_map.iter_rules()}


def test_control_route_exists_only_in_the_bench_app(app_config: dict[str, Any]) -> None:
    production = create_app(app_config)
    bench = create_bench_app(app_config)
    try:
        assert UNBILLED_PATH not in _rules(production)
        assert "/api/agent" in _rules(production)
        assert _rules(bench) - _rules(production) == {
            UNBILLED_PATH,
            ROUND_TRIPS_PATH,
            VERIFY_ONLY_PATH,
        }
    finally:
        close_app(production)
        close_app(bench)


@pytest.mark.parametrize("path", [UNBILLED_PATH, ROUND_TRIPS_PATH])
def test_control_routes_authenticate_and_answer_without_charging(
    app_config: dict[str, Any], make_user: Any, owner: psycopg.Connection[Any], path: str
) -> None:
    app = create_bench_app(app_config)
    try:
        user_id = make_user(balance=3)
        secret, prefix, key_hash = new_api_key()
        owner.execute("select api.create_api_key(%s, 'b', %s, %s)", [user_id, prefix, key_hash])
        client = app.test_client()

        anonymous = client.post(path, json={"message": "hi"})
        answered = client.post(
            path,
            json={"message": "hi there"},
            headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "k1"},
        )

        assert anonymous.status_code == 401
        assert answered.status_code == 200
        body = answered.get_json()
        assert body["agent"] == "offline" and '"hi there"' in body["reply"]
        assert body["balance"] == 3 and answered.headers["X-Token-Balance"] == "3"
        assert balance_of(owner, user_id) == 3  # nothing charged
        stored = owner.execute(
            "select count(*) as n from api.messages where user_id = %s", [user_id]
        ).fetchone()
        assert stored["n"] == 0  # nothing stored
    finally:
        close_app(app)


def _bench_databases(admin_url: str) -> set[str]:
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(
            "select datname from pg_database where datname like 'tokenbill_bench_http_%'"
        ).fetchall()
    return {name for (name,) in rows}


@pytest.mark.timeout(120)
def test_tiny_run_prints_every_row(admin_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _bench_databases(admin_url)
    argv = ["--database-url", admin_url, "--webhooks", "6", "--clients", "1,2"]

    assert bench_http.main([*argv, "--rounds", "2", "--per-round", "3"]) == 0

    out = capsys.readouterr().out
    webhooks, agent, overhead, idle = parse_tables(out)
    assert webhooks[0] == bench_http.WEBHOOK_HEADERS
    assert [(r[1], r[2], r[3]) for r in webhooks[1:]] == [
        ("1", "6", "0"), ("1", "6", "0"), ("1", "", ""),
        ("2", "6", "0"), ("2", "6", "0"), ("2", "", ""),
    ]  # fmt: skip
    assert [r[0] for r in webhooks[1:4]] == [
        "checkout.session.completed (grant)",
        f"control: {VERIFY_ONLY_PATH} (signature only)",
        "grant / control",
    ]
    assert agent[0] == bench_http.AGENT_HEADERS
    assert [(r[0], r[1], r[2]) for r in agent[1:]] == [
        ("billed: POST /api/agent", "6", "0"),
        (f"control: POST {UNBILLED_PATH}", "6", "0"),
        (f"control: POST {ROUND_TRIPS_PATH} (two empty round trips)", "6", "0"),
    ]
    assert [r[0] for r in overhead[1:]] == [
        "difference (ms)",
        "of which two empty round trips (ms)",
        "of which the database's work in them (ms)",
        "ratio (billed / control)",
    ]
    figures = {r[0]: [float(x) for x in r[1:]] for r in overhead[1:]}
    whole, trips, work = (figures[r[0]] for r in overhead[1:4])
    assert all(abs(w - (t + k)) < 0.02 for w, t, k in zip(whole, trips, work, strict=True))
    assert idle[0] == bench_http.IDLE_HEADERS
    assert [r[0] for r in idle[1:]] == [
        "select 1",
        "api.begin_agent_request",
        "api.settle_agent_request",
    ]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in idle[1:])
    warm_ups = bench_http.WARM_UP_PER_CLIENT * sum(map(bench_http.warm_up_sessions, (1, 2)))
    assert (
        f"checked: {12 + warm_ups} of {12 + warm_ups} payments granted; ledger audit empty" in out
    )
    assert _bench_databases(admin_url) - before == set()  # its database was dropped


def test_verify_only_control_checks_the_signature_and_touches_no_database(
    app_config: dict[str, Any], owner: psycopg.Connection[Any]
) -> None:
    from tests.conftest import WEBHOOK_SECRET
    from tests.support import stripe_events as ev

    app = create_bench_app(app_config)
    try:
        user = uuid.uuid4()
        body, header = ev.signed(
            ev.checkout_session_completed(user, "tokens_100", 500), WEBHOOK_SECRET
        )
        client = app.test_client()
        forged = client.post(VERIFY_ONLY_PATH, data=body, headers={"Stripe-Signature": "t=1,v1=00"})
        good = client.post(VERIFY_ONLY_PATH, data=body, headers={"Stripe-Signature": header})
        assert forged.status_code == 400
        assert good.status_code == 200 and good.get_json()["outcome"] == "verified"
        event_id = json.loads(body)["id"]
        seen = owner.execute(
            "select count(*) as n from tokenbill.stripe_events where id = %s", [event_id]
        ).fetchone()
        assert seen["n"] == 0  # the control never reaches PostgreSQL
    finally:
        close_app(app)


def test_the_round_trip_control_sends_as_many_round_trips_as_billing(
    app_config: dict[str, Any], make_user: Any, owner: psycopg.Connection[Any]
) -> None:
    """The controls are faithful on the wire: the unbilled route sends only the authentication,
    the round-trip control adds two statements where a billed request sends begin and settle."""
    from tests.support.pg_wire import round_trips
    from webapp.db import get_db

    app = create_bench_app({**app_config, "DATABASE_POOL_MAX": 1})
    try:
        user_id = make_user(balance=5)
        secret, prefix, key_hash = new_api_key()
        owner.execute("select api.create_api_key(%s, 'b', %s, %s)", [user_id, prefix, key_hash])
        client = app.test_client()
        sent: dict[str, list[str]] = {}
        for path in ("/api/agent", UNBILLED_PATH, ROUND_TRIPS_PATH):
            headers = {"Authorization": f"Bearer {secret}"}
            client.post(path, json={"message": "warm"}, headers=headers)  # sweeps old holds
            with app.app_context(), round_trips(get_db()) as trips:
                answered = client.post(path, json={"message": "hello"}, headers=headers)
            assert answered.status_code == 200
            sent[path] = trips
        authentication = sent[UNBILLED_PATH]
        assert len(authentication) == 1 and "api.user_for_api_key" in authentication[0]
        assert sent[ROUND_TRIPS_PATH] == [*authentication, "select 1", "select 1"]
        assert len(sent["/api/agent"]) == len(sent[ROUND_TRIPS_PATH])
    finally:
        close_app(app)

"""Low-balance alerts: one per downward crossing of the user's threshold, and an outbox."""

from __future__ import annotations

import pytest


def alerts(conn, user):
    return conn.execute(
        "select threshold, balance from api.low_balance_alerts where user_id = %s order by id",
        [user],
    ).fetchall()


def spend(conn, user, request_id, cost=1):
    return conn.execute(
        "select * from api.consume(%s, %s, %s)", [user, request_id, cost]
    ).fetchone()


def test_one_alert_per_crossing(owner, admin_id, make_user):
    user = make_user(balance=12)
    for i in range(4):  # 12 -> 8: crosses 10 once (10 -> 9)
        spend(owner, user, f"a{i}")
    assert alerts(owner, user) == [{"threshold": 10, "balance": 9}]
    account = owner.execute(
        "select low_balance_alert from api.accounts where id = %s", [user]
    ).fetchone()
    assert account["low_balance_alert"] is True

    # top up above the threshold, cross again: a second alert
    owner.execute("select api.admin_adjust(%s, %s, 10, 'top up')", [admin_id, user])
    assert (
        owner.execute(
            "select low_balance_alert from api.accounts where id = %s", [user]
        ).fetchone()["low_balance_alert"]
        is False
    )
    spend(owner, user, "b1", cost=9)  # 18 -> 9
    assert alerts(owner, user) == [
        {"threshold": 10, "balance": 9},
        {"threshold": 10, "balance": 9},
    ]


def test_a_big_consumption_jumping_past_the_threshold_alerts(owner, make_user):
    user = make_user(balance=50)
    spend(owner, user, "big", cost=45)
    assert alerts(owner, user) == [{"threshold": 10, "balance": 5}]


def test_threshold_zero_never_alerts_and_custom_threshold(owner, make_user):
    quiet, custom = make_user(balance=3), make_user(balance=60)
    owner.execute("select api.set_low_balance_threshold(%s, 0)", [quiet])
    owner.execute("select api.set_low_balance_threshold(%s, 50)", [custom])
    for i in range(3):
        spend(owner, quiet, f"q{i}")
    spend(owner, custom, "c", cost=11)
    assert alerts(owner, quiet) == []
    assert alerts(owner, custom) == [{"threshold": 50, "balance": 49}]


def test_an_agent_reservation_crossing_the_threshold_alerts_once(app_conn, owner, make_user):
    from tests.support.agents import begin_request

    user = make_user(balance=10)
    begin_request(app_conn, user, "r1")  # 10 -> 9: the reservation crosses
    app_conn.execute("select api.settle_agent_request(%s, 'r1', 'failed', '', 0)", [user])
    assert alerts(owner, user) == [{"threshold": 10, "balance": 9}]  # the release: no alert


def test_acknowledge_hides_the_alert(owner, make_user):
    user = make_user(balance=10)
    spend(owner, user, "x")
    n = owner.execute("select api.acknowledge_low_balance_alerts(%s) as n", [user]).fetchone()
    assert n["n"] == 1
    row = owner.execute("select low_balance_alert from api.accounts where id = %s", [user])
    assert row.fetchone()["low_balance_alert"] is False


@pytest.mark.parametrize("threshold", [-1, None, 1000001])
def test_bad_threshold_is_refused(owner, make_user, threshold):
    user = make_user()
    with pytest.raises(Exception) as info:
        owner.execute("select api.set_low_balance_threshold(%s, %s)", [user, threshold])
    assert info.value.sqlstate == "TB003"

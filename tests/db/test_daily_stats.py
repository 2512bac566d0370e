"""api.daily_stats: per-day totals for the admin charts."""

from __future__ import annotations

import uuid


def today(conn):
    return conn.execute("select * from api.daily_stats(7)").fetchall()[-1]


def test_daily_stats_count_today_and_fill_empty_days(admin_conn, owner, make_user):
    rows = admin_conn.execute("select * from api.daily_stats(7)").fetchall()
    assert len(rows) == 7
    assert [r["day"] for r in rows] == sorted(r["day"] for r in rows)

    before = today(admin_conn)
    user = make_user()
    owner.execute(
        "select api.record_checkout_session(%s, %s, 'tokens_250')", [f"cs_{uuid.uuid4().hex}", user]
    )
    owner.execute(
        "select * from api.grant_for_payment(%s, %s, 'tokens_250', 1000, 'usd')",
        [f"pi_{uuid.uuid4().hex}", str(user)],
    )
    for i in range(3):
        owner.execute("select * from api.consume(%s, %s)", [user, f"d{i}"])
    owner.execute("select * from api.release(%s, 'd0')", [user])
    after = today(admin_conn)

    assert after["tokens_sold"] - before["tokens_sold"] == 250
    assert after["revenue_cents"] - before["revenue_cents"] == 1000
    assert after["tokens_consumed"] - before["tokens_consumed"] == 2  # 3 used, 1 released
    assert after["sessions_created"] - before["sessions_created"] == 1


def test_agent_requests_count_what_they_were_charged(app_conn, admin_conn, make_user):
    """Reserved, settled and released rows net out to what the requests cost."""
    from tests.support.agents import begin_request

    user = make_user(balance=5)
    before = today(admin_conn)
    for request_id, reply in [("served", "an answer"), ("nothing", ""), ("open", None)]:
        begin_request(app_conn, user, request_id)
        if reply is not None:
            app_conn.execute(
                "select api.settle_agent_request(%s, %s, %s, %s, 0)",
                [user, request_id, "done" if reply else "failed", reply],
            )
    after = today(admin_conn)
    # 1 charged + 0 released + 1 still reserved (a running request's hold counts until settled)
    assert after["tokens_consumed"] - before["tokens_consumed"] == 2

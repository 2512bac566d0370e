"""A debit's threshold crossing: the low-balance alert and the auto top-up, for every writer.

api.consume (in its statement, 0034) and api.begin_agent_request (after its statement) each
pre-test whether a debit may have crossed a threshold, and call tokenbill.debit_crossed (the
exact rule) only then, so the common charge skips it. The adversary is a pre-test narrower
than the rule: alerts and top-ups lost without an error.
"""

from __future__ import annotations

import pytest

from tests.conftest import audit
from tests.support.agents import begin_request, settle_request


@pytest.mark.parametrize(
    ("alert", "topup", "balance", "cost", "alerted", "queued"),
    [
        (10, 50, 60, 5, False, False),  # above both after
        (10, 50, 60, 15, False, True),  # past the top-up threshold only
        (10, 50, 50, 1, False, True),  # from exactly the threshold: a crossing
        (10, 50, 52, 45, True, True),  # past both in one charge
        (10, 50, 45, 40, True, False),  # below the top-up threshold before it
        (10, 50, 11, 1, False, False),  # lands on the alert threshold: not below it
        (30, 20, 35, 10, True, False),  # the alert threshold the higher one
        (30, 20, 25, 10, False, True),
        (30, 20, 35, 30, True, True),
    ],
)
@pytest.mark.parametrize("writer", ["consume", "reserve"])
def test_a_debit_alerts_and_tops_up_for_exactly_the_thresholds_it_crosses(
    owner, app_conn, make_user, writer, alert, topup, balance, cost, alerted, queued
):
    """Each debit writer pre-tests the crossing itself and calls debit_crossed only then
    (api.consume in its statement since 0034, begin_agent_request after its statement): a
    pre-test narrower than debit_crossed's rule would lose alerts and top-ups silently."""
    user = make_user(balance=balance)
    owner.execute("select api.set_low_balance_threshold(%s, %s)", [user, alert])
    app_conn.execute("select api.set_auto_topup(%s, true, %s, 'tokens_100', 2000)", [user, topup])
    if writer == "consume":
        charged = owner.execute("select * from api.consume(%s, 'c1', %s)", [user, cost])
        assert charged.fetchone()["balance"] == balance - cost
    else:
        agent = f"costs-{cost}"
        owner.execute(
            "insert into tokenbill.prices (agent, per_call, per_1k_input, per_1k_output,"
            " max_per_call) values (%s, %s, 0, 0, %s) on conflict do nothing",
            [agent, cost, cost],
        )
        started = begin_request(owner, user, "r1", agent=agent)
        assert (started["outcome"], started["balance"]) == ("started", balance - cost)
        settle_request(owner, user, "r1")
    alerts = owner.execute(
        "select threshold from api.low_balance_alerts where user_id = %s", [user]
    ).fetchall()
    assert alerts == ([{"threshold": alert}] if alerted else [])
    queued_topups = owner.execute(
        "select count(*) as n from api.auto_topups where user_id = %s", [user]
    ).fetchone()
    assert queued_topups["n"] == (1 if queued else 0)
    assert audit(owner) == []

"""Auto top-up test helpers shared by the worker's and the pages' tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def only_our_topups(owner):
    """The outbox is shared by the test database: earlier tests' rows are not ours."""
    owner.execute("update tokenbill.auto_topups set status = 'canceled' where status = 'pending'")


def queued(owner, app_conn, make_user, *, customer: str | None = "cus_worker_1") -> tuple:
    """A user with a Customer and auto top-up on, whose last consumption crossed 50."""
    user = make_user(balance=60)
    if customer:
        customer = f"{customer}_{str(user)[:8]}"
        app_conn.execute("select api.record_stripe_customer(%s, %s)", [user, customer])
    app_conn.execute("select api.set_auto_topup(%s, true, 50, 'tokens_100', 2000)", [user])
    owner.execute("select api.consume(%s, 'cross', 20)", [user])
    row = owner.execute("select * from tokenbill.auto_topups where user_id = %s", [user]).fetchone()
    return user, customer, row

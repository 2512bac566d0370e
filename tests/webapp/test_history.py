"""/history/: the user's own purchases and token activity, newest first, paginated."""

from __future__ import annotations

import re
import uuid

from tests.support.agents import login, password_hash

PW_HASH = password_hash()
GRANT = "select * from api.grant_for_payment(%s, %s, %s, %s, %s, null, null, %s, %s)"


def member(make_user, balance: int = 0) -> tuple[uuid.UUID, str]:
    email = f"hist-{uuid.uuid4().hex[:12]}@example.test"
    return make_user(balance=balance, email=email, password_hash=PW_HASH), email


def buy(conn, user: uuid.UUID, package="tokens_100", amount=500) -> str:
    intent = f"pi_hist_{uuid.uuid4().hex[:12]}"
    receipt = f"https://pay.stripe.com/receipts/{intent}"
    conn.execute(GRANT, [intent, str(user), package, amount, "usd", f"ch_{intent}", receipt])
    return intent


def test_history_needs_login(client):
    response = client.get("/history/")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_purchases_show_amount_tokens_status_and_receipt(app, owner, make_user):
    user, email = member(make_user)
    paid = buy(owner, user, "tokens_250", 1000)
    refunded = buy(owner, user, "tokens_100", 500)
    owner.execute("select api.revoke_for_refund(%s, %s, 500)", [refunded, f"ch_{refunded}"])
    disputed = buy(owner, user, "tokens_600", 2000)
    owner.execute(
        "select api.revoke_for_dispute(%s, %s, %s, 2000, 'needs_response')",
        [f"dp_{disputed}", disputed, f"ch_{disputed}"],
    )
    page = login(app, email).get("/history/").get_data(as_text=True)
    purchases = page[page.index('id="purchases"') : page.index('id="activity"')]
    rows = purchases.split("<tr>")[2:]  # skip the header row
    assert len(rows) == 3
    assert "disputed" in rows[0] and "$20.00" in rows[0]  # newest first
    assert "refunded" in rows[1] and "$5.00" in rows[1]
    assert ">paid<" in rows[2] and "$10.00" in rows[2] and ">250" in rows[2]
    assert f'href="https://pay.stripe.com/receipts/{paid}"' in rows[2]


def test_consumption_shows_request_ids(app, owner, make_user):
    user, email = member(make_user, balance=3)
    owner.execute("select api.consume(%s, 'req-visible-1')", [user])
    page = login(app, email).get("/history/").get_data(as_text=True)
    assert "<code>req-visible-1</code>" in page and "Agent request" in page and ">-1<" in page


def test_only_the_users_own_rows_are_shown(app, owner, make_user):
    other, _ = member(make_user, balance=3)
    other_intent = buy(owner, other)
    owner.execute("select api.consume(%s, 'someone-elses-request')", [other])
    _, email = member(make_user)
    page = login(app, email).get("/history/").get_data(as_text=True)
    assert other_intent not in page and "someone-elses-request" not in page
    assert "No purchases yet" in page


def test_activity_is_paginated_newest_first(app, owner, make_user):
    user, email = member(make_user, balance=30)
    for i in range(25):
        owner.execute("select api.consume(%s, %s)", [user, f"page-req-{i:02d}"])
    client = login(app, email)
    first = client.get("/history/").get_data(as_text=True)
    ids = re.findall(r"<code>(page-req-\d+)</code>", first)
    assert ids == [f"page-req-{i:02d}" for i in range(24, 4, -1)]  # 20 newest
    assert 'rel="next"' in first
    older = re.search(r'<a href="([^"]+)" rel="next">Older →</a>', first)
    assert older and "before=" in older.group(1)
    # new activity between page loads must not push rows into the next page twice
    for i in range(3):
        owner.execute("select api.consume(%s, %s)", [user, f"late-req-{i}"])
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert re.findall(r"<code>(page-req-\d+)</code>", second) == [
        f"page-req-{i:02d}" for i in range(4, -1, -1)
    ]
    assert "Adjustment by support" in second  # the oldest row: the funding
    assert 'rel="next"' not in second
    assert 'rel="first"' in second
    newest = re.findall(
        r"<code>([a-z-]+\d+)</code>", client.get("/history/").get_data(as_text=True)
    )
    assert newest[:3] == ["late-req-2", "late-req-1", "late-req-0"]
    for junk in ("junk", "-3", "0"):
        page = client.get(f"/history/?before={junk}").get_data(as_text=True)
        assert re.findall(r"<code>([a-z-]+\d+)</code>", page) == newest  # the newest page

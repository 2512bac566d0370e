"""Admin pages: admins only; balances, ledger and adjustments; webhook inbox; refused payments."""

from __future__ import annotations

import re
import uuid

import pytest
from psycopg.types.json import Jsonb

from tests.conftest import audit, balance_of
from tests.support.agents import ledger_kinds, login, password_hash

PW_HASH = password_hash()
ADMIN_PAGES = ["/admin/", "/admin/audit", "/admin/events", "/admin/payments", "/admin/stats"]


def account(owner, make_user, balance: int = 0, admin: bool = False) -> tuple[uuid.UUID, str]:
    email = f"adm-{uuid.uuid4().hex[:12]}@example.test"
    user = make_user(balance=balance, email=email, password_hash=PW_HASH)
    if admin:
        owner.execute("select api.set_admin(%s)", [email])
    return user, email


@pytest.fixture
def admin_client(app, owner, make_user):
    admin, email = account(owner, make_user, admin=True)
    client = login(app, email)
    client.admin_id = admin  # type: ignore[attr-defined]
    return client


def event(event_type: str, obj: dict) -> dict:
    return {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": event_type,
        "livemode": False,
        "api_version": "2025-01-27.acacia",
        "created": 1764000000,
        "data": {"object": obj},
    }


@pytest.mark.parametrize(
    "path", [*ADMIN_PAGES, "/admin/users/00000000-0000-4000-8000-000000000000"]
)
def test_anonymous_is_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_non_admins_get_403(app, owner, make_user, path):
    _, email = account(owner, make_user)
    assert login(app, email).get(path).status_code == 403


def test_non_admin_cannot_adjust_or_read_a_user(app, owner, make_user):
    victim, _ = account(owner, make_user, balance=5)
    _, email = account(owner, make_user)
    client = login(app, email)
    assert client.get(f"/admin/users/{victim}").status_code == 403
    response = client.post(f"/admin/users/{victim}/adjust", data={"delta": "100", "reason": "me"})
    assert response.status_code == 403
    assert balance_of(owner, victim) == 5


def test_users_list_balances_and_search(admin_client, owner, make_user):
    _, rich_email = account(owner, make_user, balance=42)
    _, other_email = account(owner, make_user, balance=7)
    page = admin_client.get("/admin/?q=" + rich_email[:16]).get_data(as_text=True)
    assert rich_email in page and other_email not in page
    row = page[page.index(rich_email) :]
    assert "<td>42</td>" in row[: row.index("</tr>")]
    # LIKE wildcards in the search term are taken literally
    assert "No users match" in admin_client.get("/admin/?q=%25_%25").get_data(as_text=True)


def test_audit_runs_on_request_and_says_no_discrepancies(admin_client, owner):
    assert audit(owner) == []
    asked = admin_client.get("/admin/audit").get_data(as_text=True)
    assert 'id="run-audit"' in asked and "audit-result" not in asked  # not run by a GET
    page = admin_client.post("/admin/audit").get_data(as_text=True)
    assert "No discrepancies" in page


def test_audit_lists_a_discrepancy(admin_client, owner, make_user):
    user, _ = account(owner, make_user, balance=3)
    try:
        owner.execute("update tokenbill.users set balance = balance + 1 where id = %s", [user])
        page = admin_client.post("/admin/audit").get_data(as_text=True)
    finally:
        owner.execute("update tokenbill.users set balance = balance - 1 where id = %s", [user])
    assert "1 discrepancy" in page and str(user) in page


def test_the_index_never_runs_the_ledger_audit(admin_client, owner):
    """The audit reads the whole ledger (seconds at millions of rows): not on every page load.
    With EXECUTE on it taken away, the index still renders and only the audit fails."""
    owner.execute("revoke execute on function api.ledger_audit() from tokenbill_admin")
    try:
        index = admin_client.get("/admin/")
        refused = admin_client.post("/admin/audit")
    finally:
        owner.execute("grant execute on function api.ledger_audit() to tokenbill_admin")
    assert index.status_code == 200 and "Ledger audit" in index.get_data(as_text=True)
    assert refused.status_code == 500  # the revocation bites wherever the audit does run


def test_user_page_shows_the_ledger(admin_client, owner, make_user):
    user, email = account(owner, make_user, balance=3)
    owner.execute("select api.consume(%s, 'admin-visible-req')", [user])
    page = admin_client.get(f"/admin/users/{user}").get_data(as_text=True)
    assert email in page and 'id="user-balance">2<' in page
    assert "admin-visible-req" in page and "test setup" in page
    assert admin_client.get(f"/admin/users/{uuid.uuid4()}").status_code == 404
    assert admin_client.get("/admin/users/not-a-uuid").status_code == 404


def test_user_ledger_pages_older_entries_by_cursor(admin_client, owner, make_user):
    user, _ = account(owner, make_user, balance=60)
    for i in range(55):  # 56 rows with the funding: 50 on the first page
        owner.execute("select api.consume(%s, %s)", [user, f"adm-page-{i:02d}"])
    first = admin_client.get(f"/admin/users/{user}").get_data(as_text=True)
    assert "adm-page-54" in first and "adm-page-05" in first and "adm-page-04" not in first
    older = re.search(r'<a href="([^"]+)" rel="next">Older', first)
    assert older
    second = admin_client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert re.findall(r"adm-page-\d+", second) == [f"adm-page-{i:02d}" for i in range(4, -1, -1)]
    assert "test setup" in second and 'rel="next"' not in second


def test_adjust_credits_with_reason_and_actor(admin_client, owner, make_user):
    user, _ = account(owner, make_user, balance=1)
    response = admin_client.post(
        f"/admin/users/{user}/adjust", data={"delta": "25", "reason": "goodwill for outage"}
    )
    assert response.status_code == 303
    assert balance_of(owner, user) == 26
    row = owner.execute(
        "select kind, delta, reason, actor_id from api.ledger_entries"
        " where user_id = %s order by id desc limit 1",
        [user],
    ).fetchone()
    assert row == {
        "kind": "admin_adjustment",
        "delta": 25,
        "reason": "goodwill for outage",
        "actor_id": admin_client.admin_id,
    }
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "balance is now 26" in page and 'class="flash flash-success" role="status"' in page
    assert audit(owner) == []


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"delta": "-5", "reason": "too much"}, 400, "this user has 2 tokens"),
        ({"delta": "0", "reason": "nothing"}, 400, "non-zero"),
        ({"delta": "abc", "reason": "nothing"}, 400, "non-zero"),
        ({"delta": "3", "reason": "  "}, 400, "reason is required"),
    ],
)
def test_bad_adjustments_change_nothing(admin_client, owner, make_user, form, status, message):
    user, _ = account(owner, make_user, balance=2)
    before = ledger_kinds(owner, user)
    response = admin_client.post(f"/admin/users/{user}/adjust", data=form)
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert message in html and 'class="flash flash-error" role="alert"' in html
    assert "would make the balance negative" not in html  # never the raw database text
    assert ledger_kinds(owner, user) == before and balance_of(owner, user) == 2


def test_adjust_form_needs_csrf_token(make_app, owner, make_user):
    app = make_app(WTF_CSRF_ENABLED=True)
    user, _ = account(owner, make_user, balance=2)
    _, email = account(owner, make_user, admin=True)
    client = app.test_client()
    token = re.search(
        rb'name="csrf-token" content="([^"]+)"', client.get("/auth/login").data
    ).group(1)
    client.post(
        "/auth/login",
        data={"email": email, "password": "correct horse battery", "csrf_token": token.decode()},
    )
    response = client.post(f"/admin/users/{user}/adjust", data={"delta": "5", "reason": "x"})
    assert response.status_code == 400
    assert balance_of(owner, user) == 2


def test_webhook_inbox_shows_events_needing_attention(admin_client, owner, make_user):
    ignored = event("customer.created", {"id": "cus_x", "object": "customer"})
    owner.execute("select * from api.handle_stripe_event(%s)", [Jsonb(ignored)])
    failed = event("charge.refunded", {"id": "ch_x", "object": "charge"})
    owner.execute(
        "select api.record_stripe_event_failure(%s, 'database restarted mid-way')", [Jsonb(failed)]
    )
    user, _ = account(owner, make_user)
    rejected = event(
        "payment_intent.succeeded",
        {
            "id": f"pi_adm_{uuid.uuid4().hex[:12]}",
            "object": "payment_intent",
            "amount": 1,
            "amount_received": 1,
            "currency": "usd",
            "status": "succeeded",
            "metadata": {"user_id": str(user), "package": "tokens_100"},
        },
    )
    outcome = owner.execute(
        "select outcome from api.handle_stripe_event(%s)", [Jsonb(rejected)]
    ).fetchone()["outcome"]
    assert outcome == "rejected"

    page = admin_client.get("/admin/events").get_data(as_text=True)
    for evt in (ignored, failed, rejected):
        assert evt["id"] in page
    assert "database restarted mid-way" in page and "amount mismatch" in page

    only_failed = admin_client.get("/admin/events?outcome=failed").get_data(as_text=True)
    assert failed["id"] in only_failed and ignored["id"] not in only_failed
    assert admin_client.get("/admin/events?outcome=bogus").status_code == 400

    payments = admin_client.get("/admin/payments").get_data(as_text=True)
    assert rejected["data"]["object"]["id"] in payments and "amount mismatch" in payments


def test_stats_page_charts_today_from_the_database(admin_client, owner, make_user):
    def totals() -> dict[str, str]:
        html = admin_client.get("/admin/stats?days=7").data.decode()
        return dict(re.findall(r'<dd id="total-([a-z]+)">([^<]*)</dd>', html))

    before = totals()
    user = make_user()
    session_id = f"cs_{uuid.uuid4().hex}"
    owner.execute("select api.record_checkout_session(%s, %s, 'tokens_600')", [session_id, user])
    owner.execute(
        "select * from api.grant_for_payment(%s, %s, 'tokens_600', 2000, 'usd')",
        [f"pi_{uuid.uuid4().hex}", str(user)],
    )
    owner.execute("select * from api.consume(%s, 'stats-1', 5)", [user])
    response = admin_client.get("/admin/stats?days=7")
    after = totals()

    assert response.status_code == 200
    html = response.data.decode()
    assert html.count('<rect class="bar"') == 4 * 7  # four charts, one bar per day
    assert int(after["sold"]) - int(before["sold"]) == 600
    assert int(after["consumed"]) - int(before["consumed"]) == 5
    cents = [
        int(v.strip("$").replace(",", "").replace(".", ""))
        for v in (before["revenue"], after["revenue"])
    ]
    assert cents[1] - cents[0] == 2000
    assert after["conversion"].endswith("%")


def test_stats_rejects_other_ranges(admin_client):
    assert admin_client.get("/admin/stats?days=1000").status_code == 400

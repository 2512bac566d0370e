"""/metrics: protected, Prometheus text, business totals counted in PostgreSQL."""

from __future__ import annotations

import json
import uuid

from prometheus_client.parser import text_string_to_metric_families


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_requires_a_token_or_an_admin(make_app, auth, client, owner):
    assert client.get("/metrics").status_code == 401
    auth.register()
    assert client.get("/metrics").status_code == 403
    owner.execute("select api.set_admin(%s)", [auth.email])
    assert client.get("/metrics").status_code == 200

    app = make_app(METRICS_TOKEN="s3cret")
    anonymous = app.test_client()
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_business_totals_follow_the_database(make_app, owner, make_user):
    app = make_app(METRICS_TOKEN="t")
    client = app.test_client()
    headers = {"Authorization": "Bearer t"}

    def scrape():
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        return samples(response.get_data(as_text=True))

    before = scrape()
    user, intent = make_user(), f"pi_{uuid.uuid4().hex[:12]}"
    event = {
        "id": f"evt_{uuid.uuid4().hex[:12]}",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": intent,
                "object": "payment_intent",
                "amount": 500,
                "amount_received": 500,
                "currency": "usd",
                "metadata": {"user_id": str(user), "package": "tokens_100"},
            }
        },
    }
    owner.execute("select * from api.handle_stripe_event(%s::jsonb)", [json.dumps(event)])
    owner.execute("select * from api.consume(%s, 'm1')", [user])
    after = scrape()

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert (
        delta("tokenbill_stripe_events_total", type="payment_intent.succeeded", outcome="processed")
        == 1
    )
    assert delta("tokenbill_ledger_entries_total", kind="purchase") == 1
    assert delta("tokenbill_ledger_tokens_total", kind="purchase") == 100
    assert delta("tokenbill_ledger_entries_total", kind="consumption") == 1
    assert delta("tokenbill_net_revenue_cents", currency="usd") == 500
    # the first scrape itself was counted by the request metrics
    assert (
        after[
            (
                "tokenbill_http_requests_total",
                (("endpoint", "metrics.metrics"), ("method", "GET"), ("status", "200")),
            )
        ]
        >= 1
    )


def test_webhook_deliveries_are_counted_by_type_and_result(make_app, make_user):
    from tests.conftest import WEBHOOK_SECRET
    from tests.support.stripe_events import encode, payment_intent_succeeded, sign

    app = make_app(METRICS_TOKEN="t")
    client = app.test_client()

    def count(event_type: str, result: str) -> float:
        body = client.get("/metrics", headers={"Authorization": "Bearer t"}).get_data(as_text=True)
        labels = (("result", result), ("type", event_type))
        return samples(body).get(("tokenbill_webhook_deliveries_total", labels), 0)

    before = (
        count("payment_intent.succeeded", "processed"),
        count("payment_intent.succeeded", "duplicate"),
        count("unknown", "bad_request"),
    )
    body = encode(payment_intent_succeeded(str(make_user()), "tokens_100", 500))
    for _ in range(2):
        response = client.post(
            "/api/webhook/stripe",
            data=body,
            headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET)},
        )
        assert response.status_code == 200
    forged = client.post("/api/webhook/stripe", data=body, headers={"Stripe-Signature": "t=1,v1=0"})
    assert forged.status_code == 400
    after = (
        count("payment_intent.succeeded", "processed"),
        count("payment_intent.succeeded", "duplicate"),
        count("unknown", "bad_request"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]

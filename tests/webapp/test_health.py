"""/healthz makes a real database round trip."""

from __future__ import annotations


def test_healthz_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "packages": 3}


def test_healthz_reports_an_unreachable_database(make_app):
    app = make_app(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    app.extensions["tokenbill_db"].pool.timeout = 1
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"

"""Low-balance alert in the header, dismissing it, and the threshold setting."""

from __future__ import annotations

from tests.conftest import balance_of


def alert_shown(html: str) -> bool:
    return '<div id="low-balance-alert" class="low-balance" role="status" >' in html


def test_crossing_the_threshold_shows_the_alert_until_dismissed(client, auth, owner, admin_id):
    auth.register()
    user = auth.user_id(owner)
    owner.execute("select api.admin_adjust(%s, %s, 11, 'test')", [admin_id, user])
    assert not alert_shown(client.get("/").data.decode())

    for i in range(2):  # 11 -> 9 crosses the default threshold of 10
        assert client.post("/api/agent", json={"message": f"hi {i}"}).status_code == 200
    page = client.get("/").data.decode()
    assert alert_shown(page)
    assert 'data-threshold="10"' in page

    response = client.post("/account/alerts/dismiss", headers={"Referer": "http://localhost/"})
    assert response.status_code == 303
    assert not alert_shown(client.get("/").data.decode())
    assert balance_of(owner, user) == 9


def test_threshold_setting(client, auth, owner, admin_id):
    auth.register()
    user = auth.user_id(owner)
    assert client.post("/account/settings", data={"low_balance_threshold": "-3"}).status_code == 400
    assert client.post("/account/settings", data={"low_balance_threshold": "x"}).status_code == 400
    assert client.post("/account/settings", data={"low_balance_threshold": "50"}).status_code == 303
    assert 'value="50"' in client.get("/account/settings").data.decode()

    owner.execute("select api.admin_adjust(%s, %s, 50, 'test')", [admin_id, user])
    client.post("/api/agent", json={"message": "hello"})
    assert alert_shown(client.get("/").data.decode())


def test_settings_need_login(client):
    assert client.get("/account/settings").status_code == 302
    assert client.post("/account/alerts/dismiss").status_code == 302

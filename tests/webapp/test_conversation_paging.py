"""The chat page and GET /api/conversations/<id> show one page of a conversation.

Adversary: an API client with a conversation of thousands of exchanges made every page view
and JSON read load and render all of them. Now a page is the newest AGENT_PAGE_EXCHANGES
exchanges, with a link (a cursor in JSON) to the page before; a bad cursor or size is a
clear 400, never a 500.
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.support.agents import bearer, begin_request, create_key, login, settle_request


def long_conversation(conn, user: uuid.UUID, exchanges: int) -> uuid.UUID:
    conversation = None
    for i in range(exchanges):
        row = begin_request(conn, user, f"q{i:02d}", f"prompt {i:02d}", conversation)
        conversation = row["conversation_id"]
        settle_request(conn, user, f"q{i:02d}", reply=f"reply {i:02d}")
    assert conversation is not None
    return conversation


def shown(html: str) -> list[str]:
    """The prompts in the message list (the title, the first prompt, is shown elsewhere)."""
    match = re.search(r'<ol id="messages".*?</ol>', html, re.S)
    assert match is not None
    return re.findall(r"prompt \d\d", match.group(0))


def earlier_link(html: str) -> str | None:
    match = re.search(r'<a href="([^"]*)"[^>]*id="earlier-messages"', html) or re.search(
        r'id="earlier-messages"[^>]*href="([^"]*)"', html
    )
    return match.group(1).replace("&amp;", "&") if match else None


def test_the_chat_page_shows_the_newest_exchanges_and_links_to_earlier_ones(
    make_app, app_conn, member
):
    app = make_app(AGENT_PAGE_EXCHANGES=3)
    user, email = member(balance=10)
    conversation = long_conversation(app_conn, user, 7)
    client = login(app, email)

    page = client.get(f"/?c={conversation}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert shown(html) == ["prompt 04", "prompt 05", "prompt 06"]
    assert "reply 06" in html and "Earlier messages" in html
    link = earlier_link(html)
    assert link is not None and f"c={conversation}" in link

    html = client.get(link).get_data(as_text=True)
    assert shown(html) == ["prompt 01", "prompt 02", "prompt 03"]
    assert 'id="newest-messages"' in html  # back to the newest page
    link = earlier_link(html)
    assert link is not None

    html = client.get(link).get_data(as_text=True)
    assert shown(html) == ["prompt 00"]
    assert earlier_link(html) is None and "Earlier messages" not in html


def test_a_short_conversation_shows_whole_without_links(make_app, app_conn, member):
    app = make_app()  # the default page: 50 exchanges
    user, email = member(balance=10)
    conversation = long_conversation(app_conn, user, 3)
    html = login(app, email).get(f"/?c={conversation}").get_data(as_text=True)
    assert shown(html) == ["prompt 00", "prompt 01", "prompt 02"]
    assert "Earlier messages" not in html and 'id="newest-messages"' not in html


def test_the_json_endpoint_pages_with_a_cursor(make_app, owner, app_conn, make_user):
    app = make_app(AGENT_PAGE_EXCHANGES=2)
    user = make_user(balance=10)
    conversation = long_conversation(app_conn, user, 5)
    client, headers = app.test_client(), bearer(create_key(owner, user))
    url = f"/api/conversations/{conversation}"

    first = client.get(url, headers=headers).json  # the configured page size
    assert [m["content"] for m in first["messages"]] == [
        "prompt 03", "reply 03", "prompt 04", "reply 04",
    ]  # fmt: skip
    assert first["id"] == str(conversation) and first["before"] is not None

    second = client.get(f"{url}?before={first['before']}&limit=3", headers=headers).json
    assert [m["content"] for m in second["messages"] if m["role"] == "user"] == [
        "prompt 00", "prompt 01", "prompt 02",
    ]  # fmt: skip
    assert second["before"] is None  # the oldest page
    assert set(second["messages"][0]) == {
        "role", "content", "status", "request_id", "charged", "created_at",
    }  # fmt: skip

    everything = client.get(f"{url}?limit=100", headers=headers).json
    assert len(everything["messages"]) == 10 and everything["before"] is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("before=abc", "before"),
        ("before=0", "before"),
        ("before=-3", "before"),
        ("before=1.5", "before"),
        (f"before={2**63}", "before"),
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        (f"limit={2**40}", "limit"),
    ],
)
def test_a_bad_cursor_or_size_is_a_clear_400(app, owner, app_conn, make_user, query, message):
    user = make_user(balance=5)
    conversation = long_conversation(app_conn, user, 1)
    client, headers = app.test_client(), bearer(create_key(owner, user))
    response = client.get(f"/api/conversations/{conversation}?{query}", headers=headers)
    assert response.status_code == 400 and response.is_json
    assert message in response.json["error"]


def test_a_bad_cursor_on_the_chat_page_is_400(app, app_conn, member):
    user, email = member(balance=5)
    conversation = long_conversation(app_conn, user, 1)
    client = login(app, email)
    assert client.get(f"/?c={conversation}&before=nope").status_code == 400
    assert client.get("/?before=5").status_code == 200  # no conversation: nothing to page


def test_a_cursor_does_not_open_someone_elses_conversation(app, owner, app_conn, make_user):
    alice, bob = make_user(balance=5), make_user(balance=5)
    conversation = long_conversation(app_conn, alice, 2)
    client = app.test_client()
    response = client.get(
        f"/api/conversations/{conversation}?before=999999&limit=5",
        headers=bearer(create_key(owner, bob)),
    )
    assert response.status_code == 404

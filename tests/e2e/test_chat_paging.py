"""The chat page shows a conversation a page at a time (0030); sending from an older page
brings the newest page back, with the new exchange last, instead of appending the answer
below the older messages it is not next to."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from workshop.browser_tour import Live, live_servers, register, send

PAGE_EXCHANGES = 2


@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[Live]:
    """The module's app shows two exchanges a page, so three make an older page."""
    with live_servers(database_url, AGENT_PAGE_EXCHANGES=PAGE_EXCHANGES) as servers:
        yield servers


def prompts(page: Page) -> list[str]:
    return page.locator("#messages .message.user .text").all_inner_texts()


def test_sending_from_an_older_page_returns_to_the_newest(
    live: Live, page: Page, owner, admin_id
) -> None:
    base = live.url
    email = f"e2e-paging-{uuid.uuid4().hex[:8]}@example.test"
    register(page, base, email)
    user = owner.execute("select id from api.accounts where email = %s", [email]).fetchone()["id"]
    owner.execute("select api.admin_adjust(%s, %s, 10, 'e2e paging')", [admin_id, user])
    page.goto(f"{base}/")
    for i in range(3):
        send(page, f"message {i + 1}")
    conversation = owner.execute(
        "select id from api.conversations where user_id = %s", [user]
    ).fetchone()["id"]

    page.goto(f"{base}/?c={conversation}")
    assert prompts(page) == ["message 2", "message 3"]
    page.click("#earlier-messages")
    assert prompts(page) == ["message 1"]
    expect(page.locator("#newest-messages")).to_be_visible()

    send(page, "message 4")
    expect(page).to_have_url(re.compile(rf"/\?c={conversation}$"))
    expect(page.locator("#earlier-messages")).to_be_visible()
    assert prompts(page) == ["message 3", "message 4"]
    page.shot("newest-page-after-sending-from-an-older-one")  # type: ignore[attr-defined]

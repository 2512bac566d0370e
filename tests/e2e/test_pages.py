"""Every page of the app and of the Checkout emulator, at 390 px and 1280 px, in Chromium.

For a visitor, a user (who bought, chatted and had a card declined) and an admin, each page
must: not scroll sideways, log no console error, have no failed request (an error page is
only allowed its own status), and pass an axe-core scan with no serious or critical
violation. The tour itself lives in scripts/browser_tour.py (the screenshots use it too).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from scripts.browser_tour import (
    WIDTHS,
    Shop,
    Watch,
    axe_ready,
    login,
    register,
    stock,
    tour,
    visit,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shop(live, browser, database_url) -> Shop:
    """A user who bought tokens, chatted and had a card declined; an admin."""
    tag = uuid.uuid4().hex[:8]
    shop = Shop(
        base=live.url,
        # long on purpose: headings and tables that show it must wrap, not scroll sideways
        user_email=f"pages-a-rather-long-mailbox-name-for-wrapping-{tag}@subdomain.example.test",
        admin_email=f"pages-admin-{tag}@example.test",
    )
    for email in (shop.user_email, shop.admin_email):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        register(page, shop.base, email)
        if email == shop.user_email:
            stock(page, shop)
        context.close()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select api.set_admin(%s)", [shop.admin_email])
        row = conn.execute("select id from api.accounts where email = %s", [shop.user_email])
        shop.user_id = str(row.fetchone()[0])  # type: ignore[index]
    return shop


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("role", ["visitor", "user", "admin"])
def test_every_page_is_right_at_both_widths(browser, shop: Shop, role: str, width: int):
    context = browser.new_context(viewport={"width": width, "height": 900})
    axe_ready(context)
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = Watch(page)
    if role != "visitor":
        login(page, shop.base, shop.user_email if role == "user" else shop.admin_email)
    stops = tour(shop, role)
    problems = [problem for stop in stops for problem in visit(page, watch, stop)]
    context.close()
    assert len(stops) >= 3
    assert problems == [], "\n".join(problems)

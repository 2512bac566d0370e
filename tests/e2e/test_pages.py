"""Every page of the app and of the Checkout emulator, at 390 px and 1280 px, in Chromium.

For a visitor, a user (who bought, chatted and had a card declined) and an admin, each page
must: not scroll sideways, log no console error, have no failed request (an error page is
only allowed its own status), and pass an axe-core scan with no serious or critical
violation. The tour itself lives in scripts/browser_tour.py (the screenshots use it too).
"""

from __future__ import annotations

import uuid

import pytest

from scripts.browser_tour import WIDTHS, Shop, Watch, open_shop, signed_in_page, tour, visit

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
    return open_shop(browser, shop, database_url)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("role", ["visitor", "user", "admin"])
def test_every_page_is_right_at_both_widths(browser, shop: Shop, role: str, width: int):
    page = signed_in_page(browser, shop, role, width)
    watch = Watch(page)
    stops = tour(shop, role)
    problems = [problem for stop in stops for problem in visit(page, watch, stop)]
    page.context.close()
    assert len(stops) >= 3
    assert problems == [], "\n".join(problems)

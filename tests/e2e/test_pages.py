"""Every page of the app and of the Checkout emulator, at 390 px and 1280 px, in Chromium.

For a visitor, a user (who bought, chatted and had a card declined) and an admin, each page
must: not scroll sideways, log no console error, have no failed request (an error page is
only allowed its own status), and pass an axe-core scan with no serious or critical
violation. The tour itself lives in workshop/browser_tour.py (the screenshots use it too).
"""

from __future__ import annotations

import itertools
import uuid

import pytest

from workshop.browser_tour import (
    WIDTHS,
    Shop,
    Stop,
    Watch,
    axe_ready,
    live_servers,
    open_shop,
    register,
    save_settings,
    signed_in_page,
    status_text,
    tour,
    visit,
    wrong_password,
)
from workshop.net import free_port

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


@pytest.mark.parametrize("width", WIDTHS)
def test_cards_line_up_and_chart_text_is_readable(browser, shop: Shop, width: int):
    page = signed_in_page(browser, shop, "admin", width)
    page.goto(f"{shop.base}/admin/stats?days=30")
    summary = page.locator("section.card").bounding_box()
    for chart in page.locator("figure.chart").all():
        box = chart.bounding_box()
        assert (
            summary["x"] <= box["x"]
            and box["x"] + box["width"] <= summary["x"] + 1 + (summary["width"])
        )
    lefts = {round(c.bounding_box()["x"]) for c in page.locator("figure.chart").all()}
    assert round(summary["x"]) in lefts  # the first column starts where the summary does
    # tick labels: at least 9 px tall on screen and never overlapping each other
    ticks = [t.bounding_box() for t in page.locator("#chart-sold text.tick").all()]
    assert all(t["height"] >= 9 for t in ticks)
    bottom = max(t["y"] for t in ticks)
    axis = sorted((t for t in ticks if t["y"] > bottom - 2), key=lambda t: t["x"])  # the days
    assert len(axis) == 3
    assert all(a["x"] + a["width"] < b["x"] for a, b in itertools.pairwise(axis))

    # refused payments name who tried to buy what (from the declined card in the setup)
    page.goto(f"{shop.base}/admin/payments")
    row = page.locator("#payments tbody tr", has_text="tokens_250")
    assert shop.user_email in row.inner_text() and "$10.00" in row.inner_text()
    page.context.close()


def test_buy_buttons_share_one_line_at_1280(browser, shop: Shop):
    page = signed_in_page(browser, shop, "user", 1280)
    page.goto(f"{shop.base}/billing/buy")
    tops = {round(b.bounding_box()["y"]) for b in page.locator(".package button").all()}
    prices = page.locator(".package-price").first.evaluate("e => getComputedStyle(e).fontSize")
    page.context.close()
    assert len(tops) == 1
    assert float(prices.removesuffix("px")) >= 24  # the price is what stands out


def test_error_and_success_flashes_look_different(browser, shop: Shop):
    def look(page, selector: str) -> tuple[str, str, str]:
        return page.eval_on_selector(
            selector,
            "e => { const s = getComputedStyle(e);"
            " return [s.backgroundColor, s.borderLeftColor, s.color]; }",
        )

    visitor = signed_in_page(browser, shop, "visitor", 390)
    wrong_password(visitor, shop.base)
    error = look(visitor, ".flash-error")
    assert visitor.locator(".flash-error").get_attribute("role") == "alert"
    visitor.context.close()
    user = signed_in_page(browser, shop, "user", 390)
    save_settings(user, shop.base)
    success = look(user, ".flash-success")
    assert "warn you when your balance drops below 20 tokens" in user.inner_text(".flash")
    user.context.close()
    assert all(a != b for a, b in zip(error, success, strict=True))


def test_the_stripe_unreachable_page_is_right_at_both_widths(browser, database_url):
    """Stripe down while a buyer checks out: a friendly 502 page that charged nothing, and the
    same checks as every other page (it needs an app whose Stripe is a closed port)."""
    dead_stripe = f"http://127.0.0.1:{free_port()}"
    with live_servers(database_url, STRIPE_API_BASE=dead_stripe) as live:
        for width in WIDTHS:
            context = browser.new_context(viewport={"width": width, "height": 900})
            axe_ready(context)
            page = context.new_page()
            page.set_default_timeout(30_000)  # the SDK gives up on a closed port quickly
            register(page, live.url, f"pages-no-stripe-{uuid.uuid4().hex[:8]}@example.test")
            watch = Watch(page)

            def buy(page) -> None:
                page.goto(f"{live.url}/billing/buy")
                page.click(".package button >> nth=0")
                page.wait_for_selector("h1")

            problems = visit(page, watch, Stop("stripe-unreachable", buy, status=502))
            text = status_text(page)
            context.close()
            assert problems == [], "\n".join(problems)
            assert "could not reach the payment service" in text and "Nothing was charged" in text

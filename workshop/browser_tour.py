"""tokenbill in a real Chromium: the servers, what a person does, and every page to look at.

One place for what the browser tests (tests/e2e) and ``python -m workshop.screenshots`` share:
the app and the Checkout emulator wired together on loopback (as ``scripts/run`` does without
a Stripe key), Debian's Chromium driven by Playwright, the user's actions (register, buy, pay
with a test card, chat), the tour of every page for a visitor, a user and an admin, and the
checks a page must pass at any width (no horizontal scrolling, no console error, no failed
request, no serious or critical axe-core violation).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from workshop.emulator import EmulatorConfig, EmulatorServer
from workshop.net import serve_wsgi

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# From package-lock.json, installed by scripts/bootstrap.sh (npm ci); never from a CDN.
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = (390, 1280)
PASSWORD = "correct horse battery"
WEBHOOK_SECRET = "whsec_browser_tour"
SUCCESS, DECLINE = "4242 4242 4242 4242", "4000 0000 0000 0002"
INSUFFICIENT, SECURE = "4000 0000 0000 9995", "4000 0025 0000 3155"


# --------------------------------------------------------------------------- servers


class Live(NamedTuple):
    url: str  # the app
    emulator: EmulatorServer


@contextmanager
def live_servers(database_url: str, **overrides: Any) -> Iterator[Live]:
    """The app (CSRF on, like production) and the emulator, which signs webhooks to the app."""
    from webapp import create_app
    from webapp.db import close_app

    config = EmulatorConfig(webhook_secret=WEBHOOK_SECRET, webhook_url=None, seed=7)
    with EmulatorServer(config) as emulator:
        app = create_app(
            {
                "TOKENBILL_ENV": "development",
                "SECRET_KEY": "browser-tour-secret",
                "DATABASE_URL": database_url,
                "WTF_CSRF_ENABLED": True,
                "RATELIMIT_ENABLED": False,
                "STRIPE_API_BASE": emulator.url,
                "STRIPE_SECRET_KEY": "sk_test_emulator",
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "PAYMENTS_SIMULATED": True,
                **overrides,
            }
        )
        try:
            with serve_wsgi(app) as server:
                # both URLs are known only once bound; both are read per request
                app.config["PUBLIC_BASE_URL"] = server.url
                config.webhook_url = f"{server.url}/api/webhook/stripe"
                yield Live(server.url, emulator)
        finally:
            close_app(app)


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless (Playwright's own browser download is never used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


# --------------------------------------------------------------------------- what people do


def submit_form(
    page: Any, url: str, fields: dict[str, str], then: str, button: str = "button[type=submit]"
) -> None:
    """Open ``url``, fill ``fields`` (selector: value), submit, wait for ``then`` to show."""
    page.goto(url)
    for selector, value in fields.items():
        page.fill(selector, value)
    page.click(button)
    page.wait_for_selector(then)


def register(page: Any, base: str, email: str) -> None:
    credentials = {"#email": email, "#password": PASSWORD}
    submit_form(page, f"{base}/auth/register", credentials, "#token-balance")


def login(page: Any, base: str, email: str) -> None:
    credentials = {"#email": email, "#password": PASSWORD}
    submit_form(page, f"{base}/auth/login", credentials, "#token-balance")


def start_checkout(page: Any, base: str, tokens: int) -> None:
    """From the buy page to the (simulated) Stripe pay page for a package."""
    page.goto(f"{base}/billing/buy")
    page.click(f".package:has(.package-tokens:text-is('{tokens}')) button")
    page.wait_for_selector("#payment-form")


def pay(page: Any, card: str) -> None:
    page.fill("#card_number", card)
    page.fill("#expiry", "12 / 34")
    page.fill("#cvc", "123")
    page.click("#pay-button")
    page.wait_for_load_state()


def send(page: Any, text: str) -> None:
    """Type a message and press Enter (which sends); wait until the agent answered."""
    answers = page.locator("#messages .message.assistant").count()
    page.fill("#chat-message", text)
    page.press("#chat-message", "Enter")
    page.locator("#messages .message.assistant").nth(answers).wait_for()
    # a selector, not wait_for_function: its string predicate is an eval the app's CSP forbids
    page.locator("#chat-send:not([disabled])").wait_for()


# --------------------------------------------------------------------------- the tour


@dataclass(frozen=True)
class Stop:
    """A page to look at: a URL to open, or an action that ends on the page."""

    name: str
    go: str | Callable[[Any], None]
    status: int = 200  # the document's expected HTTP status (an error page is a page too)
    main: bool = False  # one of the main pages in docs/screenshots


@dataclass
class Shop:
    """What the setup bought and wrote, so the tour can open those pages."""

    base: str
    user_email: str
    admin_email: str
    user_id: str = ""
    conversation_url: str = ""
    success_url: str = ""
    receipt_url: str = ""
    paid_pay_page: str = ""  # the emulator's page of a session already paid
    open_session_id: str = ""  # a Checkout Session the user opened and left unpaid


def stock(page: Any, shop: Shop) -> None:
    """As the user (already registered): buy 100 tokens, chat, and have one card declined."""
    base = shop.base
    start_checkout(page, base, 100)
    shop.paid_pay_page = page.url
    pay(page, SUCCESS)
    page.wait_for_selector("#tokens-added")
    shop.success_url = page.url
    page.goto(f"{base}/")
    send(page, "Hello! What can I do with tokenbill?")
    send(page, "A second question,\nwritten on two lines.")
    shop.conversation_url = page.url
    start_checkout(page, base, 250)
    pay(page, DECLINE)
    page.wait_for_selector("#card-error")
    shop.open_session_id = page.url.rsplit("/", 1)[1]
    page.goto(f"{base}/history/")
    shop.receipt_url = page.locator("#purchases a", has_text="Stripe receipt").get_attribute("href")


def open_shop(browser: Any, shop: Shop, database_url: str) -> Shop:
    """Register the user (who then buys, chats and has a card declined) and the admin."""
    import psycopg

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


def signed_in_page(browser: Any, shop: Shop, role: str, width: int) -> Any:
    """A fresh context at ``width`` with axe-core loaded, signed in as ``role``."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    axe_ready(context)
    page = context.new_page()
    page.set_default_timeout(15_000)
    if role != "visitor":
        login(page, shop.base, shop.user_email if role == "user" else shop.admin_email)
    return page


def _new_key(page: Any, base: str) -> None:
    page.goto(f"{base}/account/keys/")
    page.fill("#key-name", "laptop script")
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#new-api-key")


def _declined(page: Any, base: str, card: str) -> None:
    start_checkout(page, base, 100)
    pay(page, card)
    page.wait_for_selector("#card-error")


def _challenge(page: Any, base: str) -> None:
    start_checkout(page, base, 600)
    pay(page, SECURE)
    page.wait_for_selector("#complete-authentication")


def _pay_page(page: Any, base: str) -> None:
    start_checkout(page, base, 250)


def wrong_password(page: Any, base: str) -> None:
    credentials = {"#email": "nobody@example.test", "#password": "not the password"}
    submit_form(page, f"{base}/auth/login", credentials, ".flash-error")


def save_settings(page: Any, base: str) -> None:
    fields = {"#low_balance_threshold": "20"}
    submit_form(
        page, f"{base}/account/settings", fields, ".flash-success", "form.card button[type=submit]"
    )


def _refused_adjustment(page: Any, base: str, user_id: str) -> None:
    fields = {"#adjust-delta": "-1000000", "#adjust-reason": "more than the balance"}
    button = "#adjust-heading ~ form button[type=submit]"
    submit_form(page, f"{base}/admin/users/{user_id}", fields, ".flash-error", button)


def _audit(page: Any, base: str) -> None:
    submit_form(page, f"{base}/admin/audit", {}, "#audit-result", "#run-audit")


def tour(shop: Shop, role: str) -> list[Stop]:
    """Every page a visitor, a user or an admin can reach, in the order a person would."""
    base = shop.base
    if role == "visitor":
        return [
            Stop("login", f"{base}/auth/login", main=True),
            Stop("register", f"{base}/auth/register"),
            Stop("login-refused", lambda page: wrong_password(page, base), status=401),
            Stop("not-found", f"{base}/no-such-page", status=404),
        ]
    if role == "user":
        return [
            Stop("chat-new", f"{base}/"),
            Stop("chat", shop.conversation_url, main=True),
            Stop("buy", f"{base}/billing/buy", main=True),
            Stop("emulator-pay", lambda page: _pay_page(page, base), main=True),
            Stop("emulator-declined", lambda page: _declined(page, base, DECLINE), status=402),
            Stop(
                "emulator-insufficient",
                lambda page: _declined(page, base, INSUFFICIENT),
                status=402,
            ),
            Stop("emulator-3d-secure", lambda page: _challenge(page, base), main=True),
            Stop("success", shop.success_url, main=True),
            Stop("success-unpaid", f"{base}/billing/success?session_id={shop.open_session_id}"),
            Stop("emulator-closed", shop.paid_pay_page, status=410),
            Stop("cancel", f"{base}/billing/cancel"),
            Stop("history", f"{base}/history/", main=True),
            Stop("receipt", shop.receipt_url),
            Stop("settings", f"{base}/account/settings"),
            Stop("settings-saved", lambda page: save_settings(page, base)),
            Stop("api-keys", f"{base}/account/keys/"),
            Stop("api-key-created", lambda page: _new_key(page, base), status=201, main=True),
            Stop("not-found-signed-in", f"{base}/history/nope", status=404),
        ]
    return [
        Stop("admin", f"{base}/admin/", main=True),
        Stop("admin-audit", lambda page: _audit(page, base)),
        Stop("admin-user", f"{base}/admin/users/{shop.user_id}", main=True),
        Stop(
            "admin-adjust-refused",
            lambda page: _refused_adjustment(page, base, shop.user_id),
            status=400,
        ),
        Stop("admin-events", f"{base}/admin/events?outcome=all"),
        Stop("admin-payments", f"{base}/admin/payments", main=True),
        Stop("admin-stats", f"{base}/admin/stats?days=30", main=True),
        Stop("admin-stats-7", f"{base}/admin/stats?days=7"),
        Stop("admin-stats-90", f"{base}/admin/stats?days=90"),
    ]


# --------------------------------------------------------------------------- the checks

AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations
    .filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => {
      const where = v.nodes.map(n => n.target.join(" ")).join(", ");
      return `${v.impact} ${v.id}: ${v.help} (${where})`;
    });
}"""

# The elements that stick out to the right of the viewport (what to fix when it scrolls).
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth <= width) return [];
  const clipped = el => {  // inside a scroll box (a wide table in .table-wrap is fine)
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (getComputedStyle(p).overflowX !== "visible") return true;
    }
    return false;
  };
  const found = [...document.querySelectorAll("body *")]
    .filter(el => el.getBoundingClientRect().right > width + 0.5 && !clipped(el))
    .slice(0, 5)
    .map(el => {
      const id = el.id ? "#" + el.id : "";
      const cls = typeof el.className === "string" && el.className ? "." + el.className : "";
      const right = Math.round(el.getBoundingClientRect().right);
      return `${el.tagName.toLowerCase()}${id}${cls} right=${right}`;
    });
  return found.length ? found : [`the page is ${document.documentElement.scrollWidth} px wide`];
}"""


class Watch:
    """Console errors, page errors and failed requests of one page, as they happen."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        self.expected: tuple[str, int] | None = None  # (document URL, status) of an error page
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        # Chromium logs an error page's own status; that page is expected, not broken.
        url = (msg.location or {}).get("url", "")
        if self.expected and url == self.expected[0] and "Failed to load resource" in msg.text:
            return
        self.problems.append(f"console error: {msg.text} ({url})")

    def _failed(self, request: Any) -> None:
        if request.failure == "net::ERR_ABORTED":
            return  # cancelled by the next navigation (e.g. a late favicon), not broken
        self.problems.append(f"request failed: {request.method} {request.url} {request.failure}")

    def _response(self, response: Any) -> None:
        if response.status < 400:
            return
        request = response.request
        if (
            request.is_navigation_request()
            and self.expected
            and (self.expected[1] == response.status)
        ):
            self.expected = (response.url, response.status)
            return
        self.problems.append(f"HTTP {response.status}: {request.method} {response.url}")

    def take(self) -> list[str]:
        problems, self.problems = self.problems, []
        return problems


def visit(page: Any, watch: Watch, stop: Stop) -> list[str]:
    """Open one stop and return everything wrong with it (empty when the page is right)."""
    watch.expected = ("", stop.status) if stop.status >= 400 else None
    status = None
    if isinstance(stop.go, str):
        response = page.goto(stop.go)
        status = response.status if response else None
    else:
        stop.go(page)
    page.wait_for_load_state("load")
    problems = []
    if status is not None and status != stop.status:
        problems.append(f"status {status}, expected {stop.status}")
    problems += [f"overflows to the right: {el}" for el in page.evaluate(OVERFLOW)]
    problems += page.evaluate(AXE_RUN)
    problems += watch.take()
    return [f"{stop.name} ({page.url}): {p}" for p in problems]


def axe_ready(context: Any) -> None:
    """Put axe-core into every page of the context (an init script: no inline <script>)."""
    if not AXE.exists():
        raise RuntimeError(f"{AXE} is missing: run `npm ci` (scripts/bootstrap.sh does)")
    context.add_init_script(path=str(AXE))


def status_text(page: Any) -> str:
    return re.sub(r"\s+", " ", page.inner_text("main"))

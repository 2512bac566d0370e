"""Regenerate docs/screenshots: tokenbill's main pages at 390 px and 1280 px, in Chromium.

    python -m workshop.screenshots [--out docs/screenshots]

Uses the local PostgreSQL as scripts/run does (DATABASE_ADMIN_URL, or the cluster under
.data/postgres, started if needed) with a database made fresh for the run and dropped after,
the app and the Checkout emulator on loopback, and Debian's Chromium. The pages and the data
behind them are the browser tests' tour (workshop/browser_tour.py): a user who bought 100
tokens, chatted and had a card declined, and an admin.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from webapp.ops import migrate
from workshop import services
from workshop.browser_tour import (
    ROOT,
    WIDTHS,
    Shop,
    launch,
    live_servers,
    open_shop,
    signed_in_page,
    tour,
)

DATABASE = "tokenbill_screenshots"
ROLES = ("visitor", "user", "admin")
DROP = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE))


def fresh_database(admin_url: str) -> str:
    """Drop and create the screenshots database; return its URL, migrated."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(DROP)
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    url = make_conninfo(admin_url, dbname=DATABASE)
    migrate.upgrade(url)
    return url


def take(out: Path, database_url: str) -> list[Path]:
    """Walk the tour for every role at both widths; save each main page as NAME-WIDTH.png."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with live_servers(database_url) as live, sync_playwright() as playwright:
        browser = launch(playwright)
        shop = open_shop(
            browser,
            Shop(base=live.url, user_email="ada@example.com", admin_email="grace@example.com"),
            database_url,
        )
        for width in WIDTHS:
            for role in ROLES:
                page = signed_in_page(browser, shop, role, width)
                for stop in tour(shop, role):
                    if not stop.main:
                        continue
                    if isinstance(stop.go, str):
                        page.goto(stop.go)
                    else:
                        stop.go(page)
                    page.wait_for_load_state("load")
                    path = out / f"{stop.name}-{width}.png"
                    page.screenshot(path=str(path), full_page=True)
                    saved.append(path)
                page.context.close()
        browser.close()
    return saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("werkzeug", "tokenbill.checkout_emulator"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    admin_url = os.environ.get("DATABASE_ADMIN_URL") or services.ensure_postgres()
    database_url = fresh_database(admin_url)
    try:
        for path in take(args.out, database_url):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(DROP)


if __name__ == "__main__":
    main()

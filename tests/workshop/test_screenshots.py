"""`python -m workshop.screenshots` makes every main page at both widths, from a real browser."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from workshop.browser_tour import WIDTHS, Shop, tour
from workshop.screenshots import take

pytestmark = pytest.mark.e2e


def png_width(path: Path) -> int:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", header[16:20])[0]


def test_screenshots_of_the_main_pages_at_both_widths(tmp_path: Path, database_url: str):
    saved = take(tmp_path, database_url)

    shop = Shop(base="", user_email="", admin_email="")
    main = [s.name for role in ("visitor", "user", "admin") for s in tour(shop, role) if s.main]
    assert sorted(p.name for p in saved) == sorted(f"{n}-{w}.png" for n in main for w in WIDTHS)
    for path in saved:
        assert png_width(path) == int(path.stem.rsplit("-", 1)[1])
    # the committed set is the same list of files (regenerate it when pages change)
    committed = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    assert sorted(p.name for p in committed.glob("*.png")) == sorted(p.name for p in saved)

"""Every response carries a real CSP (no inline script or style) and the usual hardening headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import AuthActions

TEMPLATES = Path(__file__).resolve().parents[2] / "frontend" / "templates"
INLINE = [
    re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),  # a script element without src
    re.compile(r"<style\b", re.I),
    re.compile(r"\sstyle\s*=", re.I),
    re.compile(r"\son[a-z]+\s*=", re.I),  # onclick= and friends
    re.compile(r"javascript:", re.I),
]


def directives(response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    parts = (part.strip().partition(" ") for part in policy.split(";") if part.strip())
    return {name: value for name, _, value in parts}


@pytest.mark.parametrize("path", ["/auth/login", "/healthz", "/no-such-page"])
def test_hardening_headers_on_every_response(client, path):
    response = client.get(path)
    csp = directives(response)
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP in development


def test_hsts_behind_https(make_app):
    response = make_app(SESSION_COOKIE_SECURE=True).test_client().get("/auth/login")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


@pytest.mark.parametrize("template", sorted(TEMPLATES.rglob("*.html")), ids=lambda p: p.name)
def test_templates_have_no_inline_script_or_style(template):
    text = template.read_text()
    assert [p.pattern for p in INLINE if p.search(text)] == []


def test_rendered_pages_have_no_inline_script_or_style(client, owner):
    actions = AuthActions(client)
    actions.register()
    owner.execute("select api.set_admin(%s)", [actions.email])
    for path in [
        "/",
        "/billing/buy",
        "/history/",
        "/account/settings",
        "/account/keys/",
        "/admin/",
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.data.decode()
        assert [p.pattern for p in INLINE if p.search(html)] == [], path

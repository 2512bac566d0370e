"""Client mistakes get a 4xx, never a 5xx: every route, every method, junk in every place.

The adversary is anyone with a browser or curl: NUL bytes (PostgreSQL text cannot hold them),
numbers past bigint, malformed UUIDs and JSON, empty and oversized fields, sent anonymously,
as a user and as an admin. Routes come from the app's own URL map, so a new route is swept
without being listed here. CSRF is off (the suite's default) so the junk reaches the views.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

JUNK = ["-1", "99999999999999999999", "1e400", "", "a\x00b", "é" * 300]
FIELDS = ["email", "password", "new_password", "current_password", "package", "message",
          "conversation_id", "request_id", "threshold", "enabled", "amount", "reason", "name",
          "cap", "monthly_cap_cents", "user_id", "key_id", "session_id", "before", "limit",
          "next", "low_balance_threshold", "auto_topup_threshold", "payment_intent"]  # fmt: skip
JSON_BODIES = [b"{}", b'"x"', b"{not json", b'{"message": 5}',
               b'{"message": "hi", "conversation_id": "zzz"}', b'{"message": "a\\u0000b"}',
               b'{"message": ["x"], "request_id": {"a": 1}}']  # fmt: skip
_VARIABLE = re.compile(r"<(?:[a-z]+:)?\w+>")  # <user_id>, <int:topup_id>, <path:filename>
HEADERS = [
    {"Authorization": "Bearer tb_" + "x" * 500, "Accept": "application/json"},
    {"Authorization": "Basic !!", "Idempotency-Key": "é" * 250, "X-Forwarded-For": "junk"},
    {"Idempotency-Key": "", "Content-Type": "application/json; charset=latin-9"},
]
URL_VALUES = ["x", "99999999999999999999", "00000000-0000-0000-0000-000000000000", "a%00b"]
QUERY = "&".join(f"{f}={v}" for f, v in zip(FIELDS, itertools.cycle(["x", "-1", "%00", ""])))


def _urls(app: Flask) -> Iterator[tuple[str, str]]:
    """(method, url) for every rule, its variables filled with each junk value."""
    for rule in app.url_map.iter_rules():
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        if not rule.arguments:
            targets = [rule.rule]
        else:
            targets = [_VARIABLE.sub(value, rule.rule) for value in URL_VALUES]
        yield from itertools.product(methods, targets)


def _probe_ran_out_of_time(url: str, response: TestResponse) -> bool:
    """/healthz's 503 when its 0.75 s budget ran out: the database was slow to answer on a
    loaded machine (the suite runs in two workers), whatever the request carried."""
    timeout = {"status": "unavailable", "database": "timeout"}
    return url == "/healthz" and response.status_code == 503 and response.get_json() == timeout


def _sweep(client: FlaskClient, app: Flask, signed_in: bool) -> list[str]:
    """Every request of the sweep; the ones answered with a 5xx. Signed in, /auth/ is left
    out: the visitor's sweep covers it, and a logout would end the identity being swept."""
    failures = []
    for method, url in _urls(app):
        if signed_in and url.startswith("/auth/"):
            continue
        requests = [dict(query_string=QUERY)] + [dict(headers=h) for h in HEADERS]
        if method == "POST":
            requests += [dict(data={f: v for f in FIELDS}) for v in JUNK]
            requests += [dict(data=body, content_type="application/json") for body in JSON_BODIES]
        for kwargs in requests:
            response = client.open(url, method=method, **kwargs)
            if response.status_code >= 500 and not _probe_ran_out_of_time(url, response):
                failures.append(f"{method} {url} {kwargs!r:.120} -> {response.status_code}")
    return failures


@pytest.mark.parametrize("who", ["anonymous", "user", "admin"])
def test_no_junk_gets_a_5xx(make_app, auth, owner, who) -> None:
    app = make_app()
    client = app.test_client()
    auth.client = client
    if who != "anonymous":
        auth.register()
        if who == "admin":
            owner.execute("select api.set_admin(%s)", [auth.email])
        auth.login()
    failures = _sweep(client, app, signed_in=who != "anonymous")
    assert failures == [], "\n".join(failures[:30])
    # the sweep ran as who it says (a page only that identity may see still answers 200)
    page = {"anonymous": "/auth/login", "user": "/history/", "admin": "/admin/"}[who]
    assert client.get(page).status_code == 200

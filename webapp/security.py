"""Request limits and response headers that apply to every route, in one place.

* Bodies: MAX_CONTENT_LENGTH for everything, WEBHOOK_MAX_CONTENT_LENGTH for Stripe's route;
  a declared Content-Length over the limit is refused with 413 before a byte is read, and a
  body without one is cut off at the limit while it is read.
* Input that blows the parser's stack (deeply nested JSON) is the client's mistake: 400.
* So is a NUL character in a query, form or JSON value: PostgreSQL text cannot hold one, and
  the driver would refuse it in the middle of a view, as a 500.
* Headers: a CSP without inline script or style, no framing, nosniff, a strict referrer
  policy, and HSTS when the app is served over HTTPS (SESSION_COOKIE_SECURE).
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, abort, current_app, jsonify, request

WEBHOOK_PATH = "/api/webhook/stripe"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"


def body_limit() -> int:
    config = current_app.config
    if request.path == WEBHOOK_PATH:
        return int(config["WEBHOOK_MAX_CONTENT_LENGTH"])
    return int(config["MAX_CONTENT_LENGTH"])


def refuse_large_bodies() -> None:
    """Before anything reads the body (CSRF, the limiter, views): judge it by its header."""
    limit = body_limit()
    request.max_content_length = limit  # a body without Content-Length stops here when read
    if request.content_length is not None and request.content_length > limit:
        abort(413, f"The request body is larger than {limit} bytes.")


def _strings(value: object) -> Iterator[str]:
    """Every string in a parsed JSON value, keys included, without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def refuse_nul_characters() -> None:
    """400 for a NUL in any query, form or JSON value, before a view hands it to PostgreSQL.
    Stripe's route is left to its signature check (PostgreSQL's jsonb refuses \\u0000 there,
    answered 400 by the webhook view)."""
    if request.path == WEBHOOK_PATH:
        return
    values: list[str] = [v for _, vs in request.args.lists() for v in vs]
    if request.is_json:
        values += _strings(request.get_json(silent=True))
    elif request.method in ("POST", "PUT", "PATCH"):
        values += [v for _, vs in request.form.lists() for v in vs]
    if any("\x00" in value for value in values):
        abort(400, "Input must not contain NUL characters.")


def add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if current_app.config.get("SESSION_COOKIE_SECURE"):
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def init_app(app: Flask) -> None:
    """Register before the extensions that read bodies, so this hook runs first."""
    app.before_request(refuse_large_bodies)
    app.before_request(refuse_nul_characters)
    app.after_request(add_headers)

    @app.errorhandler(413)
    def too_large(exc):  # type: ignore[no-untyped-def]
        return jsonify(error=getattr(exc, "description", None) or "request body too large"), 413

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError):
        return jsonify(error="The request is nested too deeply."), 400

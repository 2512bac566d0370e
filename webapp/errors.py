"""Map database and infrastructure errors to HTTP answers, in one place.

The SQL functions raise their own SQLSTATEs (see db/migrations/0004): those become 4xx.
Only a database that cannot be reached (connection failures, a server shutting down or
starting, no pooled connection in time) becomes 503, so clients (and Stripe) retry; any other
database error is a bug of ours and a 500, logged with its SQLSTATE.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta

import psycopg
from flask import Flask, Response, jsonify, render_template, request
from flask_limiter.errors import RateLimitExceeded
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException

from .extensions import limiter

log = logging.getLogger(__name__)

SQLSTATE_STATUS = {
    "TB001": 409,  # immutable
    "TB002": 404,  # not found
    "TB003": 400,  # invalid argument
    "TB004": 409,  # conflict
    "TB005": 409,  # would go negative
    "TB006": 403,  # forbidden
}


# admin_shutdown, crash_shutdown, cannot_connect_now: the server is restarting
UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03"}


def is_unavailable(exc: psycopg.Error) -> bool:
    """The database could not be reached or went away: retrying later can help."""
    state = exc.sqlstate or ""
    if state.startswith("08") or state in UNAVAILABLE_SQLSTATES:
        return True
    # lost or refused connections surface client-side, without a SQLSTATE
    return not state and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def status_for_db_error(exc: psycopg.Error) -> int:
    """HTTP status for a database error: ours are 4xx, unreachable 503, anything else 500."""
    if exc.sqlstate in SQLSTATE_STATUS:
        return SQLSTATE_STATUS[exc.sqlstate]  # type: ignore[index]
    return 503 if is_unavailable(exc) else 500


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def error_response(status: int, message: str) -> tuple[Response | str, int]:
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def _retry_after_seconds(exc: RateLimitExceeded) -> int:
    """Whole seconds until the breached limit lets one more request through (at least 1)."""
    try:
        current = limiter.current_limit
        if current is not None:
            reset = current.window.reset_time  # when the oldest counted request leaves
            return max(1, math.ceil(reset - time.time()))
    except Exception:  # storage trouble: fall back to the limit's whole window
        log.warning("could not read the rate-limit window; answering with the full window")
    return max(1, exc.limit.limit.get_expiry())


def rate_limited_response(exc: RateLimitExceeded) -> tuple[Response | str, int, dict[str, str]]:
    """429 with Retry-After, and a body that says when to retry (JSON or a readable page)."""
    seconds = _retry_after_seconds(exc)
    retry_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
    message = f"Too many requests (limit: {exc.limit.limit}). Try again in {seconds} seconds."
    headers = {"Retry-After": str(seconds)}
    if wants_json():
        body = jsonify(
            error=message,
            limit=str(exc.limit.limit),
            retry_after=seconds,
            retry_at=retry_at.isoformat().replace("+00:00", "Z"),
        )
        return body, 429, headers
    page = render_template("error.html", status=429, message=message)
    return page, 429, headers


def register(app: Flask) -> None:
    @app.errorhandler(psycopg.Error)
    def database_error(exc: psycopg.Error):
        status = status_for_db_error(exc)
        if status == 503:
            log.error("database unavailable on %s %s: %s", request.method, request.path, exc)
            return error_response(503, "The service is temporarily unavailable; try again.")
        if status >= 500:
            log.error(
                "database error %s on %s %s: %s", exc.sqlstate, request.method, request.path, exc
            )
            return error_response(500, "Something went wrong on our side.")
        message = exc.diag.message_primary or "request refused"
        return error_response(status, message)

    @app.errorhandler(PoolTimeout)
    def pool_timeout(exc: PoolTimeout):
        log.error("no database connection available on %s %s", request.method, request.path)
        return error_response(503, "The service is temporarily unavailable; try again.")

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(exc: RateLimitExceeded):
        return rate_limited_response(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

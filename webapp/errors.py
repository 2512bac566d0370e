"""Map database and infrastructure errors to HTTP answers, in one place.

The SQL functions raise their own SQLSTATEs (see db/migrations/0004): those become 4xx.
A database that cannot be reached becomes 503, so clients (and Stripe) retry.
"""

from __future__ import annotations

import logging

import psycopg
from flask import Flask, Response, jsonify, render_template, request
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

SQLSTATE_STATUS = {
    "TB001": 409,  # immutable
    "TB002": 404,  # not found
    "TB003": 400,  # invalid argument
    "TB004": 409,  # conflict
    "TB005": 409,  # would go negative
    "TB006": 403,  # forbidden
}


def status_for_db_error(exc: psycopg.Error) -> int:
    """HTTP status for a database error: ours are 4xx, anything else means retry later."""
    return SQLSTATE_STATUS.get(exc.sqlstate or "", 503)


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def error_response(status: int, message: str) -> tuple[Response | str, int]:
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def register(app: Flask) -> None:
    @app.errorhandler(psycopg.Error)
    def database_error(exc: psycopg.Error):
        status = status_for_db_error(exc)
        if status >= 500:
            log.error("database error on %s %s: %s", request.method, request.path, exc)
            return error_response(503, "The service is temporarily unavailable; try again.")
        message = exc.diag.message_primary or "request refused"
        return error_response(status, message)

    @app.errorhandler(PoolTimeout)
    def pool_timeout(exc: PoolTimeout):
        log.error("no database connection available on %s %s", request.method, request.path)
        return error_response(503, "The service is temporarily unavailable; try again.")

    @app.errorhandler(429)
    def too_many_requests(exc: HTTPException):
        # Flask-Limiter's description is the bare limit ("5 per 1 minute"); say what to do.
        item = getattr(getattr(exc, "limit", None), "limit", None)  # limits.RateLimitItem
        wait = int(item.get_expiry()) if item is not None else 60
        message = (
            f"Too many requests (limit: {exc.description}). Try again in {wait} seconds;"
            " nothing was charged for the refused request."
        )
        body, status = error_response(429, message)
        response = app.make_response((body, status))
        response.headers.setdefault("Retry-After", str(wait))
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

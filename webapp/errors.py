"""Map database and infrastructure errors to HTTP answers, in one place.

The SQL functions raise their own SQLSTATEs (see db/migrations/0004): those become 4xx.
Only a database that cannot be reached (connection failures, a server shutting down or
starting, no pooled connection in time) becomes 503, so clients (and Stripe) retry; any other
database error is a bug of ours and a 500, logged with its SQLSTATE.
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

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

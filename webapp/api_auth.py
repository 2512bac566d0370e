"""Who is calling the JSON API: a bearer API key, or the browser session (with CSRF).

A request carrying ``Authorization: Bearer`` is judged by that key alone, even if it also has a
session cookie, so "key calls skip CSRF" can never be used to ride on a cookie. Keys only
authenticate /api/ routes that use ``api_login_required``; pages still need a session.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, Literal

from flask import current_app, g, jsonify, request
from flask_login import current_user

from .db import get_db
from .extensions import csrf
from .users import ACCOUNT_COLUMNS, User

KEY_PREFIX = "tb_"
AuthMethod = Literal["key", "session"]


def new_api_key() -> tuple[str, str, str]:
    """A fresh secret, its display prefix and the SHA-256 hex stored in the database."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[:10], hash_api_key(secret)


def hash_api_key(secret: str) -> str:
    """Keys are long random strings, so a plain SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def resolve_api_user() -> tuple[User | None, AuthMethod | None]:
    """Authenticate this request once (memoised on ``g``: the rate limiter asks too)."""
    if "api_auth" in g:
        return g.api_auth
    result: tuple[User | None, AuthMethod | None] = (None, None)
    if "Authorization" in request.headers:
        token = _bearer_token()
        if token:
            # the key's user and its account in one statement (one round trip); the function
            # in FROM runs once (it notes the key's use, at most once a minute since 0027)
            row = get_db().fetch_one(
                f"select {ACCOUNT_COLUMNS} from api.user_for_api_key(%s) as k (user_id)"
                " join api.accounts on accounts.id = k.user_id",
                [hash_api_key(token)],
            )
            if row is not None:
                result = (User(**row), "key")
    elif current_user.is_authenticated:
        result = (current_user._get_current_object(), "session")  # type: ignore[attr-defined]
    g.api_auth = result
    return result


def unauthorized() -> Any:
    response = jsonify(error="Authentication required: log in or send Authorization: Bearer <key>")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="tokenbill"'
    return response


def api_login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 JSON without a valid key or session; a session call must also carry its CSRF token."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user, method = resolve_api_user()
        if user is None:
            return unauthorized()
        if method == "session" and current_app.config["WTF_CSRF_ENABLED"]:
            csrf.protect()  # raises CSRFError (400) without a valid X-CSRFToken header
        g.api_user = user
        return view(*args, **kwargs)

    return wrapped


def api_user() -> User:
    """The user ``api_login_required`` authenticated."""
    return g.api_user

"""Register, log in, log out. Passwords are hashed with Argon2id (argon2-cffi).

Login is limited per client address (AUTH_RATE_LIMIT, every attempt) and per account
(LOGIN_ACCOUNT_RATE_LIMIT, failed attempts only), and an unknown email costs one Argon2
verification like a known one, so timing does not tell which accounts exist. Password hashes
are read through their own login (AUTH_DATABASE_URL, tokenbill_auth; ``credentials``), never
the pages' DATABASE_URL.
"""

from __future__ import annotations

import re
import string
from functools import cache
from urllib.parse import urlsplit

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user

from .db import Row, get_auth_db, get_db
from .extensions import limiter
from .users import end_session, start_session

bp = Blueprint("auth", __name__, url_prefix="/auth")
hasher = PasswordHasher()

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8
# Characters a browser may drop or reinterpret in a Location ("/\t/evil" becomes "//evil").
_UNSAFE_REDIRECT_CHARS = frozenset(string.whitespace + "\\") | {chr(c) for c in range(32)}


def _auth_limit() -> str:
    return current_app.config["AUTH_RATE_LIMIT"]


def _account_limit() -> str:
    return current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"]


def _login_account_key() -> str:
    """The account a login attempt targets, as the per-account limiter key."""
    return "login-account:" + request.form.get("email", "").strip().lower()


def _failed(response: Response) -> bool:
    return response.status_code == 401


@cache
def _dummy_hash() -> str:
    """A real Argon2 hash to verify against when the account does not exist."""
    return hasher.hash("tokenbill: no such account")


def credentials(email: str) -> Row | None:
    """The account's id and password hash (None for an unknown email), read as tokenbill_auth:
    the only role that may, so a leaked DATABASE_URL reads no hash (0031)."""
    return get_auth_db().fetch_one(
        "select id, password_hash from api.user_credentials(%s)", [email]
    )


def check_password(password_hash: str | None, password: str) -> bool:
    """Verify with Argon2; with no hash, spend the same work and fail."""
    try:
        return hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def safe_next(target: str | None) -> str:
    """A same-origin path to go to after login, else the chat page.

    Only a plain absolute path survives: no scheme, no host, no "//" or backslash start, no
    whitespace or control characters that a browser would strip into one.
    """
    fallback = url_for("agent.chat")
    if not target or any(c in _UNSAFE_REDIRECT_CHARS for c in target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return fallback
    if parts.path.startswith("//"):
        return fallback
    return target


def sign_in(user_id) -> None:  # type: ignore[no-untyped-def]
    """Start a fresh server-side session: a new random token, so a planted cookie is useless."""
    user = start_session(user_id)
    if user is None:  # pragma: no cover - the account was just found
        raise RuntimeError("account vanished during login")
    login_user(user)


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(_auth_limit, methods=["POST"])
def register():
    """Create an account and sign it in."""
    if request.method == "POST":
        email = request.form.get("email", "").strip().lower()
        password = request.form.get("password", "")
        error = None
        if not EMAIL_RE.match(email):
            error = "Enter a valid email address."
        elif len(password) < MIN_PASSWORD:
            error = f"Password must be at least {MIN_PASSWORD} characters."
        if error is None:
            try:
                user_id = get_db().fetch_one(
                    "select api.register_user(%s, %s) as id", [email, hasher.hash(password)]
                )["id"]  # type: ignore[index]
            except psycopg.Error as exc:
                if exc.sqlstate != "TB004":
                    raise
                error = "An account with this email already exists."
            else:
                sign_in(user_id)
                flash("Welcome to tokenbill! Your account is ready.", "success")
                return redirect(url_for("agent.chat"), code=303)
        flash(error, "error")
        return render_template("auth/register.html", email=email), 400
    return render_template("auth/register.html")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_auth_limit, methods=["POST"])
@limiter.limit(_account_limit, key_func=_login_account_key, methods=["POST"], deduct_when=_failed)
def login():
    """Check the password against the stored Argon2 hash and start a session."""
    if request.method == "POST":
        email = request.form.get("email", "").strip().lower()
        password = request.form.get("password", "")
        row = credentials(email)
        if check_password(row["password_hash"] if row else None, password):
            sign_in(row["id"])  # type: ignore[index]
            return redirect(safe_next(request.args.get("next")), code=303)
        flash("Incorrect email or password.", "error")
        return render_template("auth/login.html", email=email), 401
    return render_template("auth/login.html")


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """End the session in PostgreSQL too: a copy of the cookie is dead from now on."""
    end_session(current_user._get_current_object())  # type: ignore[attr-defined]
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"), code=303)

"""Register, log in, log out. Passwords are hashed with Argon2id (argon2-cffi)."""

from __future__ import annotations

import re

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import login_required, login_user, logout_user

from .db import get_db
from .extensions import limiter
from .users import load_user

bp = Blueprint("auth", __name__, url_prefix="/auth")
hasher = PasswordHasher()

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8


def _auth_limit() -> str:
    return current_app.config["AUTH_RATE_LIMIT"]


def _safe_next(target: str | None) -> str:
    """Only follow same-site relative redirects after login."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("agent.chat")


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
                login_user(load_user(user_id))  # type: ignore[arg-type]
                flash("Welcome to tokenbill! Your account is ready.", "success")
                return redirect(url_for("agent.chat"), code=303)
        flash(error, "error")
        return render_template("auth/register.html", email=email), 400
    return render_template("auth/register.html")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_auth_limit, methods=["POST"])
def login():
    """Check the password against the stored Argon2 hash and start a session."""
    if request.method == "POST":
        email = request.form.get("email", "").strip().lower()
        password = request.form.get("password", "")
        row = get_db().fetch_one("select * from api.user_credentials(%s)", [email])
        valid = False
        if row is not None:
            try:
                valid = hasher.verify(row["password_hash"], password)
            except (VerifyMismatchError, InvalidHashError):
                valid = False
        if valid:
            login_user(load_user(row["id"]))  # type: ignore[arg-type, index]
            return redirect(_safe_next(request.args.get("next")), code=303)
        flash("Incorrect email or password.", "error")
        return render_template("auth/login.html", email=email), 401
    return render_template("auth/login.html")


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    logout_user()
    return redirect(url_for("auth.login"), code=303)

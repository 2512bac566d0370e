"""The signed-in user as flask-login sees it, and the server-side sessions behind the cookie.

The session cookie carries a random token, never the user id; PostgreSQL keeps its SHA-256 in
tokenbill.web_sessions. Logging out or changing the password ends sessions there, so a copied
cookie stops working at once (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass
from uuid import UUID

from flask_login import UserMixin

from .db import get_db
from .extensions import login_manager

ACCOUNT_COLUMNS = "id, email, is_admin, balance, low_balance_threshold, low_balance_alert"


@dataclass(frozen=True)
class User(UserMixin):
    id: UUID
    email: str
    is_admin: bool
    balance: int
    low_balance_threshold: int = 10
    low_balance_alert: bool = False  # an unacknowledged alert and the balance still below
    session_token: str | None = dataclasses.field(default=None, repr=False, compare=False)

    def get_id(self) -> str:
        # what flask-login stores in the cookie: the session token for browser sessions
        return self.session_token or str(self.id)

    @property
    def session_hash(self) -> str | None:
        return hash_session_token(self.session_token) if self.session_token else None


def hash_session_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_user(user_id: str | UUID) -> User | None:
    """Fetch an account by id; None when it does not exist (or the id is malformed)."""
    try:
        uid = UUID(str(user_id))
    except ValueError:
        return None
    row = get_db().fetch_one(f"select {ACCOUNT_COLUMNS} from api.accounts where id = %s", [uid])
    return User(**row) if row else None


def start_session(user_id: UUID) -> User | None:
    """Record a new server-side session for a user whose password was just checked."""
    token = secrets.token_urlsafe(32)
    get_db().fetch_one("select api.start_web_session(%s, %s)", [user_id, hash_session_token(token)])
    user = load_user(user_id)
    return dataclasses.replace(user, session_token=token) if user else None


def end_session(user: User) -> None:
    if user.session_hash:
        get_db().fetch_one("select api.end_web_session(%s)", [user.session_hash])


@login_manager.user_loader
def _user_loader(token: str) -> User | None:
    """The cookie's session, if PostgreSQL still knows it as live."""
    row = get_db().fetch_one("select * from api.web_session_user(%s)", [hash_session_token(token)])
    return User(**row, session_token=token) if row else None

"""The signed-in user as flask-login sees it, loaded from api.accounts."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from flask_login import UserMixin

from .db import get_db
from .extensions import login_manager


@dataclass(frozen=True)
class User(UserMixin):
    id: UUID
    email: str
    is_admin: bool
    balance: int
    low_balance_threshold: int = 10
    low_balance_alert: bool = False  # an unacknowledged alert and the balance still below

    def get_id(self) -> str:
        return str(self.id)


def load_user(user_id: str | UUID) -> User | None:
    """Fetch an account by id; None when it does not exist (or the id is malformed)."""
    try:
        uid = UUID(str(user_id))
    except ValueError:
        return None
    row = get_db().fetch_one(
        "select id, email, is_admin, balance, low_balance_threshold, low_balance_alert"
        " from api.accounts where id = %s",
        [uid],
    )
    return User(**row) if row else None


@login_manager.user_loader
def _user_loader(user_id: str) -> User | None:
    return load_user(user_id)

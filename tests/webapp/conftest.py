"""Fixtures shared by the web app's tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.support.agents import password_hash

PW_HASH = password_hash()


@pytest.fixture
def member(make_user) -> Callable[..., tuple[uuid.UUID, str]]:
    """A user who can log in with PASSWORD; returns (id, email)."""

    def factory(balance: int = 0) -> tuple[uuid.UUID, str]:
        email = f"member-{uuid.uuid4().hex[:12]}@example.test"
        return make_user(balance=balance, email=email, password_hash=PW_HASH), email

    return factory

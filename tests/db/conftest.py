"""Fixtures for the database tests that need a database of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo


@pytest.fixture
def empty_db(admin_url: str) -> Iterator[str]:
    """A new, unmigrated database (dropped afterwards), for migration and upgrade tests."""
    name = f"tokenbill_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    yield make_conninfo(admin_url, dbname=name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"drop database {name} with (force)")

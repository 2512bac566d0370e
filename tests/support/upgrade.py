"""Upgrade tests: a database migrated only up to an older migration, with a funded user."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg

from webapp.ops import migrate


def migrations_below(tmp_path: Path, first_left_out: str) -> Path:
    """A folder holding every migration numbered below ``first_left_out``."""
    folder = tmp_path / f"below-{first_left_out}"
    folder.mkdir()
    for path in migrate.MIGRATIONS_DIR.glob("*.sql"):
        if path.name < first_left_out:
            shutil.copy(path, folder)
    return folder


def migrate_before(database_url: str, tmp_path: Path, first_left_out: str) -> None:
    """Migrate a new database with every migration numbered below ``first_left_out``."""
    migrate.upgrade(database_url, migrations_below(tmp_path, first_left_out))


def funded_user(conn: psycopg.Connection, tokens: int) -> uuid.UUID:
    """An admin (a@example.test) and a user (u@example.test) holding ``tokens``; the user."""
    admin = conn.execute("select api.register_user('a@example.test', 'x') as id").fetchone()
    conn.execute("select api.set_admin('a@example.test')")
    user = conn.execute("select api.register_user('u@example.test', 'x') as id").fetchone()
    conn.execute(
        "select api.admin_adjust(%s, %s, %s, 'setup')",
        [admin["id"], user["id"], tokens],  # type: ignore[index]
    )
    return user["id"]  # type: ignore[index]

"""The same api.consume request id fired twice at the same moment (tests/db)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from tests.conftest import connect_owner


def twin_while_first_is_open(
    database_url: str, user: uuid.UUID, cost: int, request_id: str = "twin"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Charge ``request_id`` in an open transaction, fire its twin while that transaction is
    still open (the twin must wait for the user's row), then commit the first.
    Returns (the first call's row, the twin's row)."""
    first = connect_owner(database_url)
    first.autocommit = False
    sql = "select * from api.consume(%s, %s, %s)"
    first_row = first.execute(sql, [user, request_id, cost]).fetchone()
    twin_row: dict[str, Any] = {}

    def twin() -> None:
        with connect_owner(database_url) as conn:
            twin_row.update(conn.execute(sql, [user, request_id, cost]).fetchone())

    thread = threading.Thread(target=twin)
    thread.start()
    time.sleep(0.5)  # the twin is waiting for the user's row
    assert thread.is_alive()
    first.commit()
    first.close()
    thread.join(10)
    return first_row, twin_row

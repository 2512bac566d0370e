"""Client mistakes are 4xx; only an unreachable database is 503; other database errors 500."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.support.agents import login, password_hash
from webapp.db import get_db
from webapp.errors import status_for_db_error

PW_HASH = password_hash()


def account(make_user, owner=None, admin: bool = False) -> str:
    email = f"errors-{uuid.uuid4().hex[:12]}@example.test"
    make_user(email=email, password_hash=PW_HASH)
    if admin:
        owner.execute("select api.set_admin(%s)", [email])
    return email


@pytest.mark.parametrize(
    "query",
    [
        "?purchases_page=99999999999999999999",  # was: 503 and an ERROR log
        "?purchases_page=100001",
        "?before=99999999999999999999",
    ],
)
def test_absurd_page_numbers_are_client_errors(app, make_user, caplog, query):
    client = login(app, account(make_user))
    response = client.get(f"/history/{query}")
    assert response.status_code in (400, 404)
    assert "ERROR" not in caplog.text


def test_admin_pages_refuse_absurd_page_numbers_too(app, owner, make_user):
    client = login(app, account(make_user, owner, admin=True))
    assert client.get("/admin/?page=99999999999999999999").status_code == 404
    assert client.get("/admin/users/x?before=99999999999999999999").status_code == 404


def test_a_programming_error_is_500_not_retry_later(make_app, caplog):
    app = make_app()

    @app.get("/test-only/bad-sql")
    def bad_sql():  # a query bug of ours, as the database reports it
        return get_db().fetch_one("select 1 / 0 as x") or {}

    response = app.test_client().get("/test-only/bad-sql", headers={"Accept": "application/json"})
    assert response.status_code == 500
    assert "22012" in caplog.text  # logged with its SQLSTATE


def test_status_of_real_database_errors(owner):
    with pytest.raises(psycopg.Error) as division:
        owner.execute("select 1 / 0")
    assert status_for_db_error(division.value) == 500
    with pytest.raises(psycopg.Error) as unreachable:
        psycopg.connect("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    assert status_for_db_error(unreachable.value) == 503

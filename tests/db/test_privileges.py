"""Guards for whoever adds the next migration: privileges and search_path on every function."""

from __future__ import annotations

FUNCTIONS = """
    select n.nspname as schema, p.proname as name, p.oid::regprocedure::text as signature,
           p.prosecdef as security_definer, coalesce(p.proconfig, '{}') as config
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('api', 'tokenbill')
"""

OPERATOR_ONLY = {"set_admin"}  # deliberately not callable by the web app


def test_no_function_is_executable_by_public(owner):
    rows = owner.execute(
        f"select signature from ({FUNCTIONS}) f"
        " where has_function_privilege('public', signature::regprocedure, 'execute')"
    ).fetchall()
    assert rows == []


def test_every_function_pins_its_search_path(owner):
    rows = owner.execute(FUNCTIONS).fetchall()
    assert rows, "no functions found"
    unpinned = [
        r["signature"] for r in rows if not any(c.startswith("search_path=") for c in r["config"])
    ]
    assert unpinned == []
    # SECURITY DEFINER only for the callable surface, never for internals
    assert {r["schema"] for r in rows if r["security_definer"]} == {"api"}


def test_the_app_role_executes_exactly_the_api_surface(owner):
    rows = owner.execute(
        f"select schema, name, has_function_privilege('tokenbill_app', signature::regprocedure,"
        f" 'execute') as allowed from ({FUNCTIONS}) f"
    ).fetchall()
    api = {r["name"] for r in rows if r["schema"] == "api"}
    allowed = {r["name"] for r in rows if r["allowed"]}
    assert allowed == api - OPERATOR_ONLY
    assert not any(r["allowed"] for r in rows if r["schema"] == "tokenbill")


def test_the_app_role_can_write_no_table(owner):
    rows = owner.execute(
        """
        select c.relname, privilege_type
          from pg_class c join pg_namespace n on n.oid = c.relnamespace,
               unnest(array['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) privilege_type
         where n.nspname in ('api', 'tokenbill', 'public') and c.relkind in ('r', 'v', 'p')
           and has_table_privilege('tokenbill_app', c.oid, privilege_type)
        """
    ).fetchall()
    assert rows == []

"""Guards for whoever adds the next migration: privileges and search_path on every function."""

from __future__ import annotations

FUNCTIONS = """
    select n.nspname as schema, p.proname as name, p.oid::regprocedure::text as signature,
           p.prosecdef as security_definer, coalesce(p.proconfig, '{}') as config
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('api', 'tokenbill')
"""

# deliberately not callable by the web app: set_admin is an operator's; consume/release are
# the generic ledger primitives the agent path stopped using in 0014 (holds replaced them)
OPERATOR_ONLY = {"set_admin", "consume", "release"}
# what the metered agent path calls since 0014 (reserve → record delivery → settle/expire)
AGENT_PATH = {
    "agent_price",
    "begin_agent_request",
    "record_agent_delivery",
    "settle_agent_request",
    "expire_agent_holds",
}


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
    assert allowed >= AGENT_PATH
    assert not any(r["allowed"] for r in rows if r["schema"] == "tokenbill")


def test_the_replaced_agent_functions_are_gone(owner):
    """0014's settle (with its status guard) is the only way to end a request: no old path."""
    rows = owner.execute(
        f"select name from ({FUNCTIONS}) f where schema = 'api' and name = any(%s)",
        [["finish_agent_request", "fail_agent_request", "expire_agent_requests"]],
    ).fetchall()
    assert rows == []
    signatures = {
        r["signature"]
        for r in owner.execute(f"select signature from ({FUNCTIONS}) f").fetchall()
        if r["signature"].startswith("api.begin_agent_request(")
    }
    assert len(signatures) == 1  # the 0007 signature was dropped, not left behind


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

"""Guards for whoever adds the next migration: privileges and search_path on every function."""

from __future__ import annotations

import pytest

FUNCTIONS = """
    select n.nspname as schema, p.proname as name, p.oid::regprocedure::text as signature,
           p.prosecdef as security_definer, coalesce(p.proconfig, '{}') as config
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('api', 'tokenbill')
"""

# Per role, exactly the functions it may execute (names in schema api); anything else fails.
ALLOWED = {
    # the web app's views: accounts, sessions, keys, checkout creation, the agent, metrics
    "tokenbill_app": {
        "register_user",
        "user_credentials",
        "start_web_session",
        "web_session_user",
        "end_web_session",
        "change_password",
        "create_api_key",
        "revoke_api_key",
        "user_for_api_key",
        "record_checkout_session",
        # the metered agent path (0014): reserve → record delivery → settle / expire
        "agent_price",
        "begin_agent_request",
        "record_agent_delivery",
        "settle_agent_request",
        "expire_agent_holds",
        "set_low_balance_threshold",
        "acknowledge_low_balance_alerts",
        "billing_metrics",
    },
    # the only role that applies Stripe objects
    "tokenbill_webhook": {
        "handle_stripe_event",
        "record_stripe_event_failure",
        "fulfil_checkout_session",
    },
    # admin pages, after the app checked the signed-in admin
    "tokenbill_admin": {"admin_adjust_balance", "ledger_audit", "daily_stats"},
    "tokenbill_notifier": {"claim_alert_notifications", "finish_alert_notification"},
}
# Granted to nobody: internals other definer functions call, and operator tools.
OWNER_ONLY = {
    "grant_for_payment",
    "revoke_for_refund",
    "revoke_for_dispute",
    "consume",
    "release",
    "admin_adjust",
    "set_admin",
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


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_executes_exactly_its_allow_list(owner, role):
    rows = owner.execute(
        f"select schema, name from ({FUNCTIONS}) f"
        " where has_function_privilege(%s, signature::regprocedure, 'execute')",
        [role],
    ).fetchall()
    assert {r["schema"] for r in rows} <= {"api"}
    assert {r["name"] for r in rows} == ALLOWED[role]


def test_every_api_function_is_allowed_to_a_role_or_owner_only(owner):
    api = {
        r["name"] for r in owner.execute(f"select name from ({FUNCTIONS}) f where schema = 'api'")
    }
    assigned = set().union(*ALLOWED.values())
    assert api - assigned == OWNER_ONLY
    assert not (assigned & OWNER_ONLY)


def test_group_roles_cannot_log_in_or_escalate(owner):
    rows = owner.execute(
        "select rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
        " from pg_roles where rolname = any(%s)",
        [sorted(ALLOWED)],
    ).fetchall()
    assert len(rows) == len(ALLOWED)
    for row in rows:
        assert not any(v for k, v in row.items() if k != "rolname"), row


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
           and (has_table_privilege('tokenbill_app', c.oid, privilege_type)
                or has_table_privilege('tokenbill_webhook', c.oid, privilege_type)
                or has_table_privilege('tokenbill_admin', c.oid, privilege_type)
                or has_table_privilege('tokenbill_notifier', c.oid, privilege_type))
        """
    ).fetchall()
    assert rows == []

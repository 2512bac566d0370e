/*
 * 0026 — the expired-holds sweep gets a role of its own: tokenbill_sweeper.
 *
 * Until now api.expire_agent_holds() was granted to tokenbill_app (0014), so the background
 * workers' login (`flask --app webapp workers`, WORKER_DATABASE_URL) had to be a member of
 * tokenbill_app to run the sweep; whoever stole that URL could `SET ROLE tokenbill_app` and do
 * everything the web app does (read any user's password hash, mint API keys, reserve tokens).
 *
 * tokenbill_sweeper (NOLOGIN) alone is granted EXECUTE on api.expire_agent_holds(); the workers'
 * login is a member of tokenbill_notifier and tokenbill_sweeper only (webapp/ops/db_logins.py).
 * tokenbill_app is made a member of tokenbill_sweeper (it is INHERIT, so it keeps the sweep's
 * privilege): the web app's opportunistic sweep (webapp/metering.py), the Supabase agent-meter
 * Edge Function (its login SET ROLEs to tokenbill_app) and db/supabase/service_role.sql, which
 * mirrors tokenbill_app's effective privileges, keep working unchanged. The membership goes that
 * way only: a member of tokenbill_sweeper cannot SET ROLE tokenbill_app.
 */

-- ============================================================================================
-- Role (cluster-wide: tolerate a concurrent migration of another database creating it)
-- ============================================================================================
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'tokenbill_sweeper') then
        create role tokenbill_sweeper nologin;
    end if;
exception when duplicate_object or unique_violation then
    null;
end
$$;

comment on role tokenbill_sweeper is
    'Settles expired agent holds: api.expire_agent_holds() and nothing else. The workers'' login and (by membership) tokenbill_app.';

grant usage on schema api to tokenbill_sweeper;

-- ============================================================================================
-- The sweep: granted to tokenbill_sweeper alone; tokenbill_app keeps it through membership
-- ============================================================================================
revoke execute on function api.expire_agent_holds() from tokenbill_app;
grant execute on function api.expire_agent_holds() to tokenbill_sweeper;

do $$
begin
    if not pg_catalog.pg_has_role('tokenbill_app', 'tokenbill_sweeper', 'member') then
        grant tokenbill_sweeper to tokenbill_app;
    end if;
exception when unique_violation then
    null;  -- a concurrent migration of another database granted it first
end
$$;

comment on function api.expire_agent_holds() is
    'Settle every hold past its expires_at by the expiry rule (see tokenbill.expire_hold), one user lock at a time. Granted to tokenbill_sweeper (the workers'' sweep; tokenbill_app by membership) and run by operators. Returns how many.';

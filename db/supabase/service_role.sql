/*
 * Give Supabase's `service_role` exactly the privileges of ONE tokenbill group role on
 * tokenbill's schemas: no more (it gets nothing on the private tables) and no less. Run it as
 * the migration owner (Supabase's `postgres`) after every `flask --app webapp migrate`; it is
 * idempotent. Which role it mirrors is the setting `tokenbill.service_role_mirrors`:
 *   tokenbill_app (default) — the web role: register, API keys, the agent's reserve → settle;
 *   tokenbill_webhook       — applies Stripe events (only if a webhook calls the api by RPC);
 *   none                    — nothing at all (the Edge Functions use their own logins and
 *                             need nothing from service_role).
 *   psql "$MIGRATION_URL" -v ON_ERROR_STOP=1 \
 *       -c "set tokenbill.service_role_mirrors = 'tokenbill_app'" -f db/supabase/service_role.sql
 * Never both app and webhook: whoever holds the service key could then both run the app's
 * calls and apply (forge) Stripe events. Any other value is refused and changes nothing.
 *
 * Why a copy and not `grant tokenbill_app to service_role`: Supabase creates service_role (and
 * anon, authenticated) NOINHERIT, so a membership alone gives it nothing when PostgREST
 * switches to it. anon and authenticated are left with nothing at all.
 *
 * Not a numbered migration: it is Supabase-specific, and it must run again whenever a
 * migration grants or revokes something, which a run-once migration cannot do.
 */
do $mirror$
declare
    v_choice text := coalesce(nullif(btrim(current_setting('tokenbill.service_role_mirrors', true)), ''),
                              'tokenbill_app');
    -- The role whose privileges service_role mirrors (none: an empty list, nothing granted).
    v_sources regrole[];
    v_target regrole := 'service_role';
    v_schemas text[] := array['api', 'tokenbill'];
    v_object record;
    v_privilege text;
    v_granted boolean;
begin
    if v_choice not in ('tokenbill_app', 'tokenbill_webhook', 'none') then
        raise exception 'tokenbill.service_role_mirrors must be tokenbill_app, tokenbill_webhook or none, not %',
            v_choice
            using hint = 'service_role is reachable with the service key: give it one group role at most.';
    end if;
    v_sources := case when v_choice = 'none' then array[]::regrole[] else array[v_choice::regrole] end;

    for v_object in
        select 'schema ' || quote_ident(n.nspname) as name, n.oid, 'schema' as kind
          from pg_catalog.pg_namespace n where n.nspname = any (v_schemas)
        union all
        select 'routine ' || p.oid::regprocedure::text, p.oid, 'routine'
          from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = any (v_schemas) and p.prokind in ('f', 'p')
        union all
        select case when c.relkind = 'S' then 'sequence ' else 'table ' end || c.oid::regclass::text,
               c.oid, case when c.relkind = 'S' then 'sequence' else 'table' end
          from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any (v_schemas) and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
    loop
        foreach v_privilege in array case v_object.kind
            when 'schema' then array['USAGE', 'CREATE']
            when 'routine' then array['EXECUTE']
            when 'sequence' then array['USAGE', 'SELECT', 'UPDATE']
            else array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']
        end
        loop
            select coalesce(bool_or(case v_object.kind
                       when 'schema' then pg_catalog.has_schema_privilege(s, v_object.oid, v_privilege)
                       when 'routine' then pg_catalog.has_function_privilege(s, v_object.oid, v_privilege)
                       when 'sequence' then pg_catalog.has_sequence_privilege(s, v_object.oid, v_privilege)
                       else pg_catalog.has_table_privilege(s, v_object.oid, v_privilege) end), false)
              into v_granted
              from unnest(v_sources) s;
            execute format(
                case when v_granted then 'grant %s on %s to %s' else 'revoke %s on %s from %s' end,
                v_privilege, v_object.name, v_target);
        end loop;
    end loop;
end
$mirror$;

/*
 * 0001 — roles and schemas.
 *
 * tokenbill keeps its tables in the private schema `tokenbill` and exposes a small callable
 * surface in the schema `api` (functions and read-only views). The web app, a Supabase Edge
 * Function or any other client acts as the role `tokenbill_app`, which can EXECUTE the api
 * functions and SELECT the api views, and nothing else: it never writes a table directly.
 */

-- ============================================================================================
-- Roles
-- ============================================================================================
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'tokenbill_app') then
        create role tokenbill_app nologin;
    end if;
end
$$;

comment on role tokenbill_app is
    'What the application acts as: EXECUTE on api functions, SELECT on api views, no table writes.';

-- ============================================================================================
-- Schemas
-- ============================================================================================
create schema if not exists tokenbill;
comment on schema tokenbill is 'Private tables of tokenbill. Only the owner and SECURITY DEFINER functions touch them.';

create schema if not exists api;
comment on schema api is 'The callable surface of tokenbill: functions and read-only views for tokenbill_app.';

revoke all on schema tokenbill from public;
revoke all on schema api from public;
grant usage on schema api to tokenbill_app;

-- Functions are executable by PUBLIC by default; nothing of ours should be.
alter default privileges in schema api revoke execute on functions from public;
alter default privileges in schema tokenbill revoke execute on functions from public;

-- Who may execute what: the per-role allow-list, and the conventions every migration keeps.
-- A new api function must be added to exactly one list below (or to owner-only) to pass.
begin;
create extension if not exists pgtap;
select plan(24);

create temp view fns as
    select n.nspname as schema, p.proname as name, p.oid as oid,
           p.oid::regprocedure::text as signature, p.prosecdef as security_definer,
           coalesce(p.proconfig, '{}') as config, p.proacl as acl
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('api', 'tokenbill');

-- the group roles (NOLOGIN; logins are NOINHERIT members, webapp/ops/db_logins.py)
create temp table group_roles (r name);
insert into group_roles values ('tokenbill_app'), ('tokenbill_webhook'), ('tokenbill_admin'),
    ('tokenbill_notifier'), ('tokenbill_sweeper'), ('tokenbill_auth');

-- the only memberships among them: the web role inherits the sweep (0026), and nothing else
create temp table members (member name, grp name);
insert into members values ('tokenbill_app', 'tokenbill_sweeper');

-- what each group role is granted directly; it executes these and its groups' (members above)
create temp table allowed (role name, fn name);
insert into allowed values
    -- the web app's views: accounts, sessions, keys, checkout creation, the metered agent path
    -- (reserve → record delivery → settle / expire), low-balance settings, metrics
    ('tokenbill_app', 'register_user'),
    ('tokenbill_app', 'start_web_session'), ('tokenbill_app', 'web_session_user'),
    ('tokenbill_app', 'end_web_session'), ('tokenbill_app', 'change_password'),
    ('tokenbill_app', 'create_api_key'), ('tokenbill_app', 'revoke_api_key'),
    ('tokenbill_app', 'user_for_api_key'), ('tokenbill_app', 'conversation_history'),
    ('tokenbill_app', 'conversation_page'),
    ('tokenbill_app', 'record_checkout_session'),
    ('tokenbill_app', 'agent_price'), ('tokenbill_app', 'begin_agent_request'),
    ('tokenbill_app', 'record_agent_delivery'), ('tokenbill_app', 'settle_agent_request'),
    ('tokenbill_app', 'set_low_balance_threshold'),
    ('tokenbill_app', 'acknowledge_low_balance_alerts'), ('tokenbill_app', 'billing_metrics'),
    -- 0019: the account's Stripe Customer and auto top-up settings
    ('tokenbill_app', 'record_stripe_customer'), ('tokenbill_app', 'set_auto_topup'),
    -- the only role that applies Stripe objects
    ('tokenbill_webhook', 'handle_stripe_event'), ('tokenbill_webhook', 'record_stripe_event_failure'),
    ('tokenbill_webhook', 'fulfil_checkout_session'),
    -- admin pages, after the app checked the signed-in admin
    ('tokenbill_admin', 'admin_adjust_balance'), ('tokenbill_admin', 'ledger_audit'),
    ('tokenbill_admin', 'daily_stats'),
    ('tokenbill_notifier', 'claim_alert_notifications'),
    ('tokenbill_notifier', 'finish_alert_notification'),
    -- 0019: the auto top-up worker (flask auto-topup) claims and finishes; it cannot grant
    ('tokenbill_notifier', 'claim_auto_topup'), ('tokenbill_notifier', 'finish_auto_topup'),
    -- 0026: the expired-holds sweep alone (the workers' login; tokenbill_app by membership)
    ('tokenbill_sweeper', 'expire_agent_holds'),
    -- 0031: password hashes, for the login and change-password checks (AUTH_DATABASE_URL) alone
    ('tokenbill_auth', 'user_credentials');

-- granted to nobody: internals other definer functions call, and operator tools
create temp table owner_only (fn name);
insert into owner_only values ('grant_for_payment'), ('revoke_for_refund'), ('revoke_for_dispute'),
    ('consume'), ('release'), ('admin_adjust'), ('set_admin');

select is_empty($$select signature from fns
                   where has_function_privilege('public', oid, 'execute')$$,
                'PUBLIC executes no function');
select is_empty($$select signature from fns
                   where not exists (select from unnest(config) c where c like 'search_path=%')$$,
                'every function pins its search_path');
select is_empty($$select signature from fns where security_definer and schema <> 'api'$$,
                'SECURITY DEFINER only for the api surface, never for internals');

select set_eq(format($$select name from fns
                        where has_function_privilege(%L, oid, 'execute')$$, r),
              format($$select fn from allowed
                        where role = %1$L or role in (select grp from members where member = %1$L)$$,
                     r),
              r || ' executes exactly its allow-list')
  from group_roles order by r;
select is_empty($$select schema, name from fns, group_roles
                   where schema <> 'api' and has_function_privilege(r, oid, 'execute')$$,
                'no group role executes anything outside api');
select set_eq($$select g.r, f.name
                  from fns f cross join lateral aclexplode(f.acl) a
                  join group_roles g on g.r = a.grantee::regrole::text
                 where a.privilege_type = 'EXECUTE'$$,
              $$select role, fn from allowed$$,
              'each function is granted directly to exactly the roles allowed it');
select is_empty($$select fn from allowed group by fn having count(*) > 1$$,
                'each allowed function is granted to exactly one role');
select set_eq($$select u.rolname as member, g.rolname as grp
                  from pg_auth_members m join pg_roles u on u.oid = m.member
                  join pg_roles g on g.oid = m.roleid
                 where u.rolname in (select r from group_roles)
                   and g.rolname in (select r from group_roles)$$,
              $$select member, grp from members$$,
              'group roles are members of no other group role but tokenbill_app of tokenbill_sweeper');
select is(pg_has_role('tokenbill_app', 'tokenbill_sweeper', 'usage'), true,
          'tokenbill_app inherits the sweep (the web app and the agent-meter Edge Function call it)');
select is_empty($$select r from group_roles
                   where r <> 'tokenbill_auth' and pg_has_role(r, 'tokenbill_auth', 'member')$$,
                'no other group role can act as tokenbill_auth (0031)');

-- password hashes (0031): one function returns them, and only tokenbill_auth executes it
select set_eq($$select f.signature
                  from fns f join pg_proc p on p.oid = f.oid
                       cross join lateral unnest(p.proargnames, p.proargmodes) a (name, mode)
                 where a.name = 'password_hash' and a.mode in ('o', 'b', 't')
                union
                select f.signature
                  from fns f join pg_proc p on p.oid = f.oid
                  join pg_type t on t.oid = p.prorettype
                  join pg_attribute c on c.attrelid = t.typrelid
                 where c.attname = 'password_hash'$$,
              $$values ('api.user_credentials(text)')$$,
              'api.user_credentials is the only function returning a password hash');
select is_empty($$select c.relname from pg_attribute a
                    join pg_class c on c.oid = a.attrelid
                    join pg_namespace n on n.oid = c.relnamespace
                   where n.nspname = 'api' and a.attname = 'password_hash' and not a.attisdropped$$,
                'no api view has a password_hash column');
select is_empty($$select c.relname, r from pg_class c join pg_namespace n on n.oid = c.relnamespace,
                        (values ('tokenbill_auth'::name)) roles (r)
                  where n.nspname in ('api', 'tokenbill') and c.relkind in ('r', 'v', 'p', 'm')
                    and has_table_privilege(r, c.oid, 'select')$$,
                'tokenbill_auth selects no table or view: it reads credentials and nothing else');

select set_eq($$select name from fns where schema = 'api'
                 except select fn from allowed$$,
              $$select fn from owner_only$$,
              'every api function is allowed to a role, or is owner-only');
select is_empty($$select fn from allowed intersect select fn from owner_only$$,
                'nothing is both allowed and owner-only');

select is_empty($$select rolname from pg_roles
                   where rolname in (select r from group_roles)
                     and (rolcanlogin or rolsuper or rolcreaterole or rolcreatedb or rolbypassrls)$$,
                'group roles cannot log in or escalate');

select is_empty($$select name from fns where schema = 'api'
                   and name in ('finish_agent_request', 'fail_agent_request', 'expire_agent_requests')$$,
                'the agent functions 0014 replaced are gone');
select is((select count(*)::int from fns where signature like 'api.begin_agent_request(%'), 1,
          'one begin_agent_request: the 0007 signature was dropped, not left behind');

select is_empty($$select c.relname, p
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace,
                        unnest(array['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p,
                        group_roles
                  where n.nspname in ('api', 'tokenbill', 'public') and c.relkind in ('r', 'v', 'p')
                    and has_table_privilege(r, c.oid, p)$$,
                'no group role can write any table or view');

select * from finish();
rollback;

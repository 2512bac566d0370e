-- Every object a DBA can look at carries a comment (psql \d+, \df+, database browsers).
begin;
create extension if not exists pgtap;
select plan(5);

select is_empty($$
    select n.nspname || '.' || c.relname
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname in ('api', 'tokenbill') and c.relkind in ('r', 'p', 'v', 'm')
       and obj_description(c.oid, 'pg_class') is null$$,
    'every table and view in api and tokenbill has a comment');

select is_empty($$
    select p.oid::regprocedure::text
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('api', 'tokenbill')
       and obj_description(p.oid, 'pg_proc') is null$$,
    'every function in api and tokenbill has a comment');

select is_empty($$
    select t.typname
      from pg_type t join pg_namespace n on n.oid = t.typnamespace
     where n.nspname in ('api', 'tokenbill') and t.typtype in ('e', 'd')
       and obj_description(t.oid, 'pg_type') is null$$,
    'every enum and domain has a comment');

select is_empty($$
    select nspname from pg_namespace
     where nspname in ('api', 'tokenbill') and obj_description(oid, 'pg_namespace') is null$$,
    'both schemas have a comment');

select is_empty($$
    select rolname from pg_roles
     where rolname in ('tokenbill_app', 'tokenbill_webhook', 'tokenbill_admin', 'tokenbill_notifier',
                       'tokenbill_sweeper', 'tokenbill_auth')
       and shobj_description(oid, 'pg_authid') is null$$,
    'every group role has a comment');

select * from finish();
rollback;

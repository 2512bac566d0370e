-- Contract of the ledger and its one writer, tokenbill.post_entry.
-- Run with the rest of db/tests: pg_prove -d "$DATABASE_URL" db/tests/ (see db/README.md).
begin;
create extension if not exists pgtap;
select plan(12);

-- a user to move tokens for (rolled back with everything else)
select api.register_user('pgtap-ledger@example.test', 'x') as uid \gset

select is(tokenbill.post_entry(:'uid', 'admin_adjustment', 10, p_reason => 'seed',
                               p_actor_id => :'uid'),
          10, 'post_entry credits and returns the new balance');
select is(tokenbill.post_entry(:'uid', 'consumption', -4, p_request_id => 'r1'),
          6, 'post_entry debits within the balance');
select is(tokenbill.post_entry(:'uid', 'consumption', -7, p_request_id => 'r2'),
          null, 'post_entry refuses an overdraft with NULL');
select is((select balance from tokenbill.users where id = :'uid'), 6,
          'a refused overdraft changes no balance');
select is((select count(*)::int from tokenbill.ledger where user_id = :'uid'), 2,
          'a refused overdraft writes no ledger row');
select is((select balance_after from tokenbill.ledger where user_id = :'uid'
            order by id desc limit 1), 6,
          'balance_after of the newest row is the balance');

select throws_ok(format('update tokenbill.ledger set delta = 1000 where user_id = %L', :'uid'),
                 'TB001', null, 'ledger rows cannot be updated, even by the owner');
select throws_ok(format('delete from tokenbill.ledger where user_id = %L', :'uid'),
                 'TB001', null, 'ledger rows cannot be deleted, even by the owner');
select throws_ok('truncate tokenbill.ledger cascade', 'TB001', null,
                 'the ledger cannot be truncated');
select throws_ok(format($$select tokenbill.post_entry(%L, 'consumption', -1)$$, :'uid'),
                 '23514', null, 'a consumption needs a request id (check constraint)');
select throws_ok(format($$select tokenbill.post_entry(%L, 'consumption', -1, p_request_id => 'r1')$$,
                        :'uid'),
                 '23505', null, 'one consumption per request id (unique index)');

select is_empty('select * from api.ledger_audit()', 'the audit finds no drift');

select * from finish();
rollback;

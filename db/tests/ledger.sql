-- Contract of the ledger and its one writer, tokenbill.post_entry.
-- Run with the rest of db/tests: pg_prove -d "$DATABASE_URL" db/tests/ (see db/README.md).
begin;
create extension if not exists pgtap;
select plan(16);

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

select throws_ok(format($$select tokenbill.post_entry(%L, 'reserve', 3, p_request_id => 'r3')$$, :'uid'),
                 '23514', null, 'a reserve must be a debit (check function, 0020)');
select throws_ok(format($$select tokenbill.post_entry(%L, 'admin_adjustment', 1, p_actor_id => %L)$$,
                        :'uid', :'uid'),
                 '23514', null, 'an admin adjustment needs a reason (check function, 0020)');
select is(tokenbill.post_entry(gen_random_uuid(), 'admin_adjustment', 5, p_reason => 'ghost',
                               p_actor_id => :'uid'),
          null, 'no user row, no movement: post_entry writes nothing for an unknown user');
-- 0020 replaced the ledger's foreign keys by construction and a delete guard: check the result
select is_empty($$select l.id from tokenbill.ledger l
                   where not exists (select from tokenbill.users u where u.id = l.user_id)
                      or (l.actor_id is not null
                          and not exists (select from tokenbill.users u where u.id = l.actor_id))
                      or (l.payment_id is not null
                          and not exists (select from tokenbill.payments p where p.id = l.payment_id))$$,
                'every user, actor and payment a ledger row names exists');

select is_empty('select * from api.ledger_audit()', 'the audit finds no drift');

select * from finish();
rollback;

-- Contract of the metered agent path (0014): reserve → settle / release, exactly once.
begin;
create extension if not exists pgtap;
select plan(17);

select api.register_user('pgtap-holds@example.test', 'x') as uid \gset
select is(tokenbill.post_entry(:'uid', 'admin_adjustment', 2, p_reason => 'seed', p_actor_id => :'uid'),
          2, 'seeded with 2 tokens');

-- begin reserves the price's maximum ('*' = 1 token per interaction)
select results_eq(
    format($$select outcome, balance, price from api.begin_agent_request(
               %L, 'r1', null, 'hello', 'any-agent', 'hash-1', 60)$$, :'uid'),
    $$values ('started'::text, 1, 1)$$,
    'begin reserves the price and answers started');
select is((select kind::text from tokenbill.ledger where user_id = :'uid' order by id desc limit 1),
          'reserve', 'the reservation is a ledger row');
select results_eq(
    format($$select outcome, balance from api.begin_agent_request(
               %L, 'r1', null, 'hello', 'any-agent', 'hash-1', 60)$$, :'uid'),
    $$values ('replayed'::text, 1)$$,
    'the same key and body replays without charging');
select results_eq(
    format($$select outcome, balance from api.begin_agent_request(
               %L, 'r1', null, 'other', 'any-agent', 'hash-2', 60)$$, :'uid'),
    $$values ('mismatch'::text, 1)$$,
    'the same key with another body is a mismatch and charges nothing');

-- something delivered: charged; a second settlement changes nothing (status guard)
select results_eq(
    format($$select status, message_status, charged, balance
               from api.settle_agent_request(%L, 'r1', 'done', 'an answer', 5)$$, :'uid'),
    $$values ('settled'::text, 'done'::text, 1, 1)$$,
    'a delivered reply is charged its price');
select results_eq(
    format($$select status, charged, balance
               from api.settle_agent_request(%L, 'r1', 'failed', '', 5)$$, :'uid'),
    $$values ('already_settled'::text, 1, 1)$$,
    'a second settlement is refused by the status guard');

-- nothing delivered: released
select is((select outcome from api.begin_agent_request(:'uid', 'r2', null, 'hi', 'a', 'h', 60)),
          'started', 'a second request reserves');
select results_eq(
    format($$select message_status, charged, balance
               from api.settle_agent_request(%L, 'r2', 'failed', '', 2)$$, :'uid'),
    $$values ('failed'::text, 0, 1)$$,
    'a failure before any delivery is released in full');

-- insufficient: nothing reserved, nothing stored
select is((select outcome from api.begin_agent_request(:'uid', 'r3', null, 'hi', 'a', 'h', 60)),
          'started', 'the last token is reserved');
select results_eq(
    format($$select outcome, balance from api.begin_agent_request(
               %L, 'r4', null, 'hi', 'a', 'h', 60)$$, :'uid'),
    $$values ('insufficient_tokens'::text, 0)$$,
    'with nothing left the request is refused');
select is_empty(format($$select from api.agent_holds where user_id = %L and request_id = 'r4'$$,
                       :'uid'),
                'a refused request leaves no hold');

-- a recorded delivery makes an abandoned hold chargeable at expiry; an undelivered one is released
select ok(api.record_agent_delivery(:'uid', 'r3', 1, 10, 5), 'delivery progress is recorded');
update tokenbill.exchanges set expires_at = now() - interval '1 second' where user_id = :'uid'
   and hold_status = 'held';
select cmp_ok(api.expire_agent_holds(), '>=', 1, 'the sweep settles overdue holds');
select results_eq(
    format($$select status, charged, outcome from api.agent_holds
              where user_id = %L and request_id = 'r3'$$, :'uid'),
    $$values ('settled'::text, 1, 'expired'::text)$$,
    'an expired hold that had delivered is charged');
select ok(not api.record_agent_delivery(:'uid', 'r3', 2, 20, 5),
          'a settled hold accepts no more delivery: the stream must stop');

select is_empty('select * from api.ledger_audit()', 'the audit finds no drift');

select * from finish();
rollback;

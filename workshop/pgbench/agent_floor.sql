-- The floor under one agent request on tokenbill's tables: the four writes its guarantees
-- need and nothing else, as two plain statements run as the owner (no function, no argument
-- rule, no price look-up, no conversation check, no twin handling, no threshold test):
-- reserve (the balance's conditional UPDATE, the exchange with the prompt and its hold, the
-- ledger's 'reserve' row) in one statement, then the settle (the reply and the hold closed on
-- the exchange). Every index, CHECK and trigger of the real tables fires. The seed's whole
-- request (seed_agent.sql) writes the same four rows in four transactions.
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
with u as (
    update tokenbill.users set balance = balance - 1
     where id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid and balance >= 1
    returning id, balance),
e as (
    insert into tokenbill.exchanges (conversation_id, user_id, request_id, prompt, cost,
                                     request_hash, agent, per_call, per_1k_input, per_1k_output,
                                     reserved, hold_status, expires_at)
    select id, id, :r::text, 'How many tokens does this cost?', 1, 'bench-request-hash', 'bench',
           1, 0, 0, 1, 'held', now() + interval '300 seconds' from u
    returning user_id)
insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id, reason)
select u.id, 'reserve', -1, u.balance, :r::text, 'agent bench: up to 1 reserved' from u, e;
update tokenbill.exchanges set hold_status = 'settled', charged = reserved, settled_at = now(), outcome = 'done', input_chars = 31, delivered_chars = 10, delivered_parts = 1, reply = 'One token.', reply_status = 'done', completed_at = now() where user_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid and request_id = :r::text and hold_status = 'held';

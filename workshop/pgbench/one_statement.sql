-- One statement: conditional UPDATE of tokenbill.users + INSERT into tokenbill.ledger (every
-- index, constraint and trigger of the real ledger fires), no idempotency check.
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
with u as (
    update tokenbill.users set balance = balance - 1
     where id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid and balance >= 1
    returning id, balance)
insert into tokenbill.ledger (user_id, kind, delta, balance_after, request_id)
select id, 'consumption', -1, balance, :r::text from u;

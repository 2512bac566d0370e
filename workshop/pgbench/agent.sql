-- The DB work of one agent request, as webapp/metering.py calls it (acting as tokenbill_app):
-- reserve (hold, ledger 'reserve', conversation and both messages), then settle ('done').
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
select * from api.begin_agent_request(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, :r::text, null, 'How many tokens does this cost?', 'bench', 'bench-request-hash', 300);
select * from api.settle_agent_request(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, :r::text, 'done', 'One token.', 31, '', 1);

-- One agent request continuing the account's existing conversation (as the seed writes into an
-- existing session): reserve (hold, ledger 'reserve', the conversation touched, both messages),
-- then settle ('done'). The loader made one conversation per account, id = the account's id.
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
select * from api.begin_agent_request(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, :r::text, ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, 'How many tokens does this cost?', 'bench', 'bench-request-hash', 300);
select * from api.settle_agent_request(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, :r::text, 'done', 'One token.', 31, '', 1);

-- The seed's whole agent request: its billing path, then the user message and the reply
-- stored with one INSERT each (three write transactions).
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
select tokens from bench.user_profiles where id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid;
select * from bench.deduct_token_if_sufficient(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid);
insert into bench.messages (session_id, message) values (('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid::text || '~bench', '{"type": "human", "content": "How many tokens does this cost?"}');
insert into bench.messages (session_id, message) values (('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid::text || '~bench', '{"type": "ai", "content": "One token."}');

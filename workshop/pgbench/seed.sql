-- The seed's reference path: its app reads the balance (check_user_tokens), then calls
-- deduct_token_if_sufficient (SELECT ... FOR UPDATE / UPDATE / INSERT): two transactions.
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
select tokens from bench.user_profiles where id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid;
select * from bench.deduct_token_if_sufficient(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid);

-- api.consume: one idempotent charge per (user, request id). Owner-only since 0013.
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
select * from api.consume(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, :r::text, 1);

-- A conditional UPDATE on a bare table, no ledger: the ceiling.
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
update bench.raw_accounts set tokens = tokens - 1 where id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid and tokens >= 1;

-- The one statement (one_statement.sql) inside the least function the rules allow: the floor
-- under api.consume (bench.wrapped_one_statement, workshop/pgbench/scratch_schema.sql).
\set n random(:first, :last)
\set r random(1, 9000000000000000000)
select * from bench.wrapped_one_statement(('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, :r::text, 1);

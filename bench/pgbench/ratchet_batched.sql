-- The SQL-API path, batched: one pgbench "transaction" is @B@ workflows of K
-- steps through the batched functions (sql/55_batch.sql), what a worker
-- running @B@ workflows at once writes: start them (start_workflows), claim
-- @B@, record step i of all of them in one record_steps call, K times, and
-- finish them all in one finish_many call. Every call is its own transaction
-- (autocommit): 3 + K commits for @B@ workflows, each row still fenced on its
-- own run_id. bench/batch.py multiplies pgbench's tps by the rows claimed.
-- Template: as ratchet.sql, plus @B@ = the batch size.
select cardinality(ratchet.start_workflows('bench', array_fill('{"args": [@K@]}'::jsonb, array[@B@]), 'bench')) as started \gset
select array_agg(workflow_id) as ids, array_agg(run_id) as runs from ratchet.claim(array['bench'], 'pgbench-' || :client_id, @B@) \gset
select count(*) from ratchet.record_steps(:ids::text[], :runs::bigint[], array_fill(@STEP@, array[cardinality(:ids::text[])]), array_fill('bench_step'::text, array[cardinality(:ids::text[])]), array_fill('{"i": @STEP@}'::jsonb, array[cardinality(:ids::text[])])) where outcome = 'ok';
select count(*) from ratchet.finish_many(:ids::text[], :runs::bigint[], array_fill('{"k": @K@}'::jsonb, array[cardinality(:ids::text[])])) where outcome = 'ok';

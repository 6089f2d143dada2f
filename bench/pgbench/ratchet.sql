-- The SQL-API path: the same workflow through Ratchet's functions.
--
-- One pgbench "transaction" is one workflow of K steps, statement for
-- statement what the raw floor (raw.sql) does: a starter call
-- (start_workflow), then what a worker does: claim one, record K steps,
-- finish. Every call is its own transaction (autocommit). The queue is
-- pre-filled, so claim() takes the oldest due workflow (FIFO), not
-- necessarily the one this client just started, and never finds it empty.
-- Template: bench/run.py repeats each line that contains @STEP@ K times, with
-- @STEP@ = 0 .. K-1, replaces @K@ by K, and drops these comment lines.
select ratchet.start_workflow('bench', '{"args": [@K@]}', queue => 'bench');
select workflow_id, run_id from ratchet.claim(array['bench'], 'pgbench-' || :client_id, 1) \gset
select ratchet.record_step(:workflow_id, :run_id, @STEP@, 'bench_step', '{"i": @STEP@}');
select ratchet.finish(:workflow_id, :run_id, '{"k": @K@}');

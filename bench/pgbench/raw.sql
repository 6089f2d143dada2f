-- The raw floor: what Postgres itself does per workflow on this machine.
--
-- One pgbench "transaction" is one workflow of K steps: 1 INSERT (start),
-- 1 UPDATE (claim), K INSERTs (steps), 1 UPDATE (finish); every statement is
-- its own transaction (autocommit, one commit and WAL flush each), as in
-- Ratchet. Template: bench/run.py repeats each line that contains @STEP@ K
-- times, with @STEP@ = 0 .. K-1, replaces @K@ by K, and drops these comment lines.
insert into raw_workflows (workflow_id, name, queue, status, input, created_at, updated_at)
  values (gen_random_uuid()::text, 'bench', 'bench', 'enqueued', '{"args": [@K@]}', now(), now())
  returning workflow_id \gset
update raw_workflows set status = 'running', run_id = 1, worker_id = 'pgbench-' || :client_id, updated_at = now() where workflow_id = :workflow_id;
insert into raw_steps (workflow_id, step_id, name, output, recorded_at) values (:workflow_id, @STEP@, 'bench_step', '{"i": @STEP@}', now());
update raw_workflows set status = 'succeeded', output = '{"k": @K@}', run_id = null, worker_id = null, updated_at = now() where workflow_id = :workflow_id;

-- ---- arch: one end-of-run transition, status invariants in the schema ----
-- _on_end, _take and _recoverable became _end_run, _wake_waiter and _claim_row.
drop function if exists ratchet._on_end(text, text, timestamptz);
drop function if exists ratchet._take(text, text, interval, timestamptz, boolean);
drop function if exists ratchet._recoverable(ratchet.workflows, timestamptz);
-- Backfill so the named invariants hold on upgraded rows (0.1.0 kept them in
-- code only): no run outside running, ended_at exactly for the end states.
update ratchet.workflows
   set run_id = null, worker_id = null, lease_expires_at = null
 where status <> 'running' and (run_id is not null or worker_id is not null or lease_expires_at is not null);
update ratchet.workflows
   set status = 'enqueued', start_at = updated_at
 where status = 'running' and (run_id is null or worker_id is null or lease_expires_at is null);
update ratchet.workflows set ended_at = updated_at
 where status in ('succeeded', 'failed', 'cancelled', 'dead') and ended_at is null;
update ratchet.workflows set ended_at = null
 where status not in ('succeeded', 'failed', 'cancelled', 'dead') and ended_at is not null;
alter table ratchet.workflows
  drop constraint if exists workflows_check,
  add constraint workflows_ended_at_check
    check ((ended_at is not null) = (status in ('succeeded', 'failed', 'cancelled', 'dead'))),
  add constraint workflows_run_check
    check (case when status = 'running'
                then run_id is not null and worker_id is not null and lease_expires_at is not null
                else run_id is null and worker_id is null and lease_expires_at is null end);

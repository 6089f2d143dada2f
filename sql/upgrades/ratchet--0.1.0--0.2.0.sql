-- Upgrade preamble: ratchet 0.1.0 -> 0.2.0. Hand-written; sql/build.sh turns it
-- into python_client/ratchet/_sql/ratchet--0.1.0--0.2.0.sql (ALTER EXTENSION
-- ratchet UPDATE) and ratchet-plain--0.1.0--0.2.0.sql (plain-SQL installs) by
-- putting a version guard (RT008) before it and every sql/*.sql except
-- 10_tables.sql after it, with `create function|view` as `create or replace`.
--
-- What belongs here, and only here:
--   * what sql/10_tables.sql changes since 0.1.0: new tables, columns, types,
--     indexes, constraints, sequences, with the backfill of existing rows
--     (10_tables.sql stays the truth for a fresh install; write these so the
--     result is the same catalog, including comments and column order);
--   * `drop function if exists ratchet.f(<0.1.0 argument types>);` for every
--     function whose signature, argument names, defaults or return type change,
--     or that is removed (create or replace cannot change those);
--   * `drop view if exists ratchet.v;` for every view whose columns change.
-- Lines tagged `-- @extension-only` are left out of the plain-SQL upgrade.
-- The whole upgrade runs in one transaction. Rows of workflows in flight
-- (enqueued, running, sleeping, waiting) must stay claimable and their recorded
-- steps untouched: tests/sql/test_upgrade.py runs such workflows across the
-- upgrade and compares the upgraded catalog with a fresh 0.2.0 install.
--
-- One section per change, headed `-- ---- <who>: <what> ----`.

-- ---- upgrade: 0.2.0 release (no table changes) ----
-- Roles became optional (sql/90_views_grants.sql); nothing to migrate.

-- ---- trust: trusted settings, time zone names, schedule errors, cron parameter names ----
-- ratchet.now() honours ratchet.fake_now only where the owner enabled it.
create table ratchet.settings (
  singleton          boolean primary key default true check (singleton),
  fake_clock_enabled boolean not null default false,
  -- how far the skipping clock (ratchet.fake_now = 'skip') runs ahead
  clock_offset       interval not null default interval '0' check (clock_offset >= interval '0')
);
comment on table ratchet.settings is
  'Trusted settings (one row), changed only by the extension owner or a superuser: '
  'fake_clock_enabled lets sessions move ratchet.now() with SET ratchet.fake_now (tests only); '
  'clock_offset is how far ahead of the real clock sessions with ratchet.fake_now = ''skip'' '
  'are (a test advances it to skip time).';
insert into ratchet.settings default values;

-- Cron zones are validated against this copy of pg_timezone_names (the
-- session cache ratchet.cron_zones, which a client could forge, is gone).
create table ratchet.time_zones (
  name text primary key
);
comment on table ratchet.time_zones is
  'Internal: lower-case time zone names from pg_timezone_names at install (cron zone check).';
insert into ratchet.time_zones (name)
select distinct pg_catalog.lower(z.name) from pg_catalog.pg_timezone_names z;

-- tick() isolates a failing schedule and records why.
alter table ratchet.schedules
  add column last_error jsonb,
  add column last_error_at timestamptz;

-- cron functions: parameters renamed p_expr/p_after/p_at/p_timezone ->
-- expr/after/at/timezone like every other public function.
drop function if exists ratchet.cron_parse(text);
drop function if exists ratchet.cron_next(text, timestamptz, text);
drop function if exists ratchet.cron_prev(text, timestamptz, text);
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

-- ---- arch: ratchet.runs (one row per claim) ----
create table ratchet.runs (
  workflow_id text not null,
  run_id      bigint not null,
  attempt     int not null,             -- the workflow's attempts when claimed
  worker_id   text not null,
  app_version text,                     -- the worker's application version
  claimed_at  timestamptz not null,
  ended_at    timestamptz,              -- NULL while the run is current
  -- how the run stopped: the workflow ended (succeeded, failed, dead,
  -- cancelled), was handed back (retried after an error, suspended for a
  -- sleep or wait, released at once), or the lease expired and another claim
  -- took over (lost)
  outcome     text,
  error       jsonb,                    -- the run's error (failed, retried, dead)
  primary key (workflow_id, run_id),
  constraint runs_outcome_check
    check (outcome in ('succeeded', 'failed', 'dead', 'cancelled', 'retried', 'suspended',
                       'released', 'lost')),
  constraint runs_ended_at_check check ((ended_at is null) = (outcome is null))
);
comment on table ratchet.runs is
  'One row per claim of a workflow: which worker ran it, when, and how the run ended.';
select pg_catalog.pg_extension_config_dump('ratchet.runs', ''); -- @extension-only
-- 0.1.0 kept no history: the current run of each running workflow gets its
-- row, so finishing it after the upgrade closes it like any other run.
insert into ratchet.runs (workflow_id, run_id, attempt, worker_id, claimed_at)
select w.workflow_id, w.run_id, w.attempts, w.worker_id, w.updated_at
  from ratchet.workflows w
 where w.status = 'running';

-- ---- arch: retry policy in SQL ----
alter table ratchet.workflows add column retry_policy jsonb;
drop function if exists ratchet.fail(text, bigint, jsonb, interval);
drop function if exists ratchet.start_workflow(text, jsonb, text, text, int, text, timestamptz, interval, int, text);

-- ---- arch: rolling deploys (claim by names, app versions) ----
alter table ratchet.workflows add column app_version text;
drop function if exists ratchet.claim(text[], text, int, interval);
drop function if exists ratchet.claim_workflow(text, text, interval);
-- ---- retention: per-queue retention periods, indexes for maintain() ----
-- Queues keep ended workflows for a period per end status (NULL = forever).
-- Existing queues get the defaults, so history past them is deleted by the
-- first maintain() calls after the upgrade (docs/upgrading.md).
alter table ratchet.queues
  add column if not exists keep_succeeded interval default interval '7 days'
    check (keep_succeeded >= interval '0'),
  add column if not exists keep_failed interval default interval '30 days'
    check (keep_failed >= interval '0'),
  add column if not exists keep_cancelled interval default interval '7 days'
    check (keep_cancelled >= interval '0'),
  add column if not exists keep_dead interval default interval '30 days'
    check (keep_dead >= interval '0');
-- purge() gained queue and status filters.
drop function if exists ratchet.purge(interval, int);
-- One range scan per (queue, status) finds what is due (was: ended_at only).
drop index if exists ratchet.workflows_ended_idx;
create index workflows_ended_idx on ratchet.workflows (queue, status, ended_at)
  where ended_at is not null;
create index if not exists messages_destination_idx on ratchet.messages (destination_id);
create index if not exists messages_consumed_idx on ratchet.messages (consumed_at)
  where consumed_at is not null;
-- Consumed messages now go after the queue's retention period.
comment on table ratchet.messages is
  'Messages sent to workflows. Consumed ones stay (consumed_at) for the retention period '
  'of the destination''s queue, so a sender retrying with the same idempotency_key within '
  'it never delivers twice; they go with their workflow in any case.';
-- ---- batch: one fence for single-row and batched writes ----
-- _lock_run became _fence (it can report an outcome per row instead of raising).
drop function if exists ratchet._lock_run(text, bigint, boolean);
-- ---- dashboard: throughput by end time ----
create index workflows_ended_at_idx on ratchet.workflows (ended_at)
  where ended_at is not null;
-- ---- otel: trace context stored at start ----
alter table ratchet.workflows add column trace_context jsonb;
drop function if exists ratchet.start_workflow(text, jsonb, text, text, int, text, timestamptz, interval, int, text, jsonb, text);
-- ---- batchfault: a batch of finishes retried after its reply was lost ----
-- finish_many and fail_many treat a retry of this run's own committed end as ok, and
-- finish_and_claim returns again what the committed call claimed: function
-- bodies only (same signatures), so nothing to drop or migrate here.

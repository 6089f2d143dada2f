-- Tables, types and indexes.
--
-- One fixed set of tables with a queue column (no table per queue), so every
-- function is static SQL with cached plans. Indexes on the hot path are
-- partial on the live states (enqueued, running): ended workflows cost the
-- claim path nothing however many accumulate.

create table ratchet.queues (
  name               text primary key,
  -- at most this many workflows running on the queue across all workers
  concurrency        int check (concurrency > 0),
  -- at most this many running per worker_id
  worker_concurrency int check (worker_concurrency > 0),
  -- at most rate_limit claims in any window of rate_period
  rate_limit         int check (rate_limit > 0),
  rate_period        interval check (rate_period > interval '0'),
  paused             boolean not null default false,
  created_at         timestamptz not null default pg_catalog.now(),
  -- retention: how long ended workflows stay (NULL keeps them forever).
  -- Failed and dead ones can still be resumed, so they stay longer.
  keep_succeeded     interval default interval '7 days' check (keep_succeeded >= interval '0'),
  keep_failed        interval default interval '30 days' check (keep_failed >= interval '0'),
  keep_cancelled     interval default interval '7 days' check (keep_cancelled >= interval '0'),
  keep_dead          interval default interval '30 days' check (keep_dead >= interval '0'),
  check ((rate_limit is null) = (rate_period is null))
);

comment on table ratchet.queues is
  'Named lines of workflows with optional limits. The queue "default" always exists.';

insert into ratchet.queues (name) values ('default');

create sequence ratchet.run_id_seq;
comment on sequence ratchet.run_id_seq is
  'Run ids: every claim of a workflow takes a new one; writes name it (fencing).';

create table ratchet.workflows (
  workflow_id      text primary key,
  -- status first among the mutable columns: every hot-path index filters on it
  status           text not null default 'enqueued',
  name             text not null,
  queue            text not null,
  input            jsonb not null default '{}',
  output           jsonb,
  error            jsonb,
  -- lower runs first; FIFO (by start_at) within a priority
  priority         int not null default 0 check (priority >= 0),
  dedup_key        text,
  -- 1 on the first run; +1 for every retry (fail with retry_in) and every
  -- recovery of an expired lease. Suspending (sleep, waits) does not count.
  attempts         int not null default 0,
  max_attempts     int not null default 10 check (max_attempts > 0),
  run_id           bigint,            -- current run; NULL when not running
  worker_id        text,
  lease_expires_at timestamptz,
  -- when an enqueued workflow becomes claimable (delays, sleeps, retries)
  start_at         timestamptz not null,
  deadline         timestamptz,       -- past it the workflow is cancelled
  parent_id        text,
  forked_from      text,
  -- what a suspended workflow waits for besides start_at: a message on topic
  -- wait_key, or the end of child wait_key. Its arrival moves start_at to now.
  wait_for         text check (wait_for in ('message', 'child')),
  wait_key         text,
  created_at       timestamptz not null,
  started_at       timestamptz,       -- first claim
  ended_at         timestamptz,
  updated_at       timestamptz not null,
  -- Added in 0.2.0 (last, so that upgraded and fresh tables have one column
  -- order). How errors are retried: ratchet.retry_delay's policy without
  -- max_attempts (the max_attempts column is the one attempt budget); NULL:
  -- an error fails the workflow.
  retry_policy     jsonb,
  -- the version of the application that started it (workers record theirs
  -- on each run, ratchet.runs.app_version)
  app_version      text,
  -- the W3C trace context of the start (e.g. {"traceparent": "00-..."}), so
  -- whichever worker runs it continues the starter's trace (OpenTelemetry)
  trace_context    jsonb,
  -- The state machine's invariants, River-style: whatever writes the table,
  -- a row that breaks one of them cannot exist.
  constraint workflows_status_check
    check (status in ('enqueued', 'running', 'succeeded', 'failed', 'cancelled', 'dead')),
  -- ended_at is set exactly for the end states
  constraint workflows_ended_at_check
    check ((ended_at is not null) = (status in ('succeeded', 'failed', 'cancelled', 'dead'))),
  -- a running workflow has a run, a worker and a lease; any other has none
  constraint workflows_run_check
    check (case when status = 'running'
                then run_id is not null and worker_id is not null and lease_expires_at is not null
                else run_id is null and worker_id is null and lease_expires_at is null end)
);

comment on table ratchet.workflows is
  'One row per workflow: its state machine, input, result and current run.';

-- claim(): due enqueued workflows of a queue, by priority then start_at.
create index workflows_claim_idx on ratchet.workflows (queue, priority, start_at)
  where status = 'enqueued';
-- claim(): expired leases of a queue; queue concurrency counts live leases.
create index workflows_running_idx on ratchet.workflows (queue, lease_expires_at)
  where status = 'running';
-- heartbeat() and per-worker concurrency.
create index workflows_worker_idx on ratchet.workflows (worker_id)
  where status = 'running';
-- Dedup keys are unique among the live workflows of a queue only.
create unique index workflows_dedup_idx on ratchet.workflows (queue, dedup_key)
  where dedup_key is not null and status in ('enqueued', 'running');
-- Deadline sweep in claim()/heartbeat().
create index workflows_deadline_idx on ratchet.workflows (deadline)
  where deadline is not null and status in ('enqueued', 'running');
-- Children of a workflow (cancel cascades, `ratchet show`).
create index workflows_parent_idx on ratchet.workflows (parent_id)
  where parent_id is not null;
-- Retention (maintain(), purge()): ended workflows of a queue and status,
-- oldest first; one range scan per (queue, status) finds what is due.
create index workflows_ended_idx on ratchet.workflows (queue, status, ended_at)
  where ended_at is not null;
-- Throughput over a recent window (dashboard, ratchet.metrics()): by end time.
create index workflows_ended_at_idx on ratchet.workflows (ended_at)
  where ended_at is not null;
-- Operator listings (`ratchet ls`) newest first.
create index workflows_created_idx on ratchet.workflows (created_at);

create table ratchet.steps (
  workflow_id text not null,
  step_id     int not null check (step_id >= 0),
  name        text not null,
  output      jsonb,
  error       jsonb,
  run_id      bigint,
  recorded_at timestamptz not null,
  -- the dedup constraint: a step is recorded once, never overwritten
  primary key (workflow_id, step_id)
);

comment on table ratchet.steps is
  'Step checkpoints. The primary key (workflow_id, step_id) detects duplicate work.';

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

create type ratchet.claimed as (
  workflow_id text,
  name        text,
  input       jsonb,
  run_id      bigint,
  attempt     int,
  steps       jsonb   -- [{step_id, name, output, error}, ...] in step order
);

comment on type ratchet.claimed is
  'A claimed workflow: what a worker needs to run (and replay) it, in one row.';

-- Rate limiting: one row per claim on a rate-limited queue; rows older than
-- the queue's rate_period are deleted by claim() itself.
create table ratchet.queue_claims (
  queue      text not null,
  claimed_at timestamptz not null
);
create index queue_claims_idx on ratchet.queue_claims (queue, claimed_at);

comment on table ratchet.queue_claims is
  'Internal: claim times within the current window of rate-limited queues.';

create sequence ratchet.message_id_seq;

create table ratchet.messages (
  message_id      bigint primary key default pg_catalog.nextval('ratchet.message_id_seq'),
  destination_id  text not null,
  -- '' is the default topic (a NULL topic in the API)
  topic           text not null default '',
  message         jsonb not null,
  idempotency_key text,
  created_at      timestamptz not null,
  consumed_at     timestamptz,
  consumed_step   int
);

comment on table ratchet.messages is
  'Messages sent to workflows. Consumed ones stay (consumed_at) for the retention period '
  'of the destination''s queue, so a sender retrying with the same idempotency_key within '
  'it never delivers twice; they go with their workflow in any case.';

-- recv(): oldest pending message of a destination and topic.
create index messages_pending_idx on ratchet.messages (destination_id, topic, message_id)
  where consumed_at is null;
create unique index messages_idempotency_idx on ratchet.messages (destination_id, idempotency_key)
  where idempotency_key is not null;
-- Retention: the messages of a workflow being deleted, and consumed ones by age.
create index messages_destination_idx on ratchet.messages (destination_id);
create index messages_consumed_idx on ratchet.messages (consumed_at)
  where consumed_at is not null;

create table ratchet.events (
  workflow_id text not null,
  key         text not null,
  value       jsonb,
  updated_at  timestamptz not null,
  primary key (workflow_id, key)
);

comment on table ratchet.events is
  'Key/value events published by workflows (latest value wins).';

create table ratchet.schedules (
  name             text primary key,
  cron             text not null,
  timezone         text not null default 'UTC',
  workflow_name    text not null,
  input            jsonb not null default '{}',
  queue            text not null default 'default',
  next_fire_at     timestamptz not null,
  last_fired_at    timestamptz,
  last_workflow_id text,
  created_at       timestamptz not null,
  -- the last error tick() met evaluating or firing this schedule (NULL after
  -- a good firing); a failing schedule never stops the others
  last_error       jsonb,
  last_error_at    timestamptz
);

comment on table ratchet.schedules is
  'Cron schedules; tick() starts each due firing exactly once.';

create index schedules_due_idx on ratchet.schedules (next_fire_at);

-- Trusted settings: one row, written only by the extension owner or a
-- superuser (no role is granted UPDATE). ratchet.now() honours the session
-- setting ratchet.fake_now only while fake_clock_enabled is true, so no
-- worker or client can move Ratchet's clock in a database where an
-- administrator did not ask for it (test databases). docs/security.md.
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

-- Time zone names accepted by schedules, copied from pg_timezone_names at
-- install (reading that view scans the zone directory: tens of ms). Lower
-- case. A name missing here is still checked against pg_timezone_names.
create table ratchet.time_zones (
  name text primary key
);

comment on table ratchet.time_zones is
  'Internal: lower-case time zone names from pg_timezone_names at install (cron zone check).';

insert into ratchet.time_zones (name)
select distinct pg_catalog.lower(z.name) from pg_catalog.pg_timezone_names z;

-- pg_dump keeps user data of extension tables only when marked. The default
-- queue row is created by the install script itself, so it is left out.
select pg_catalog.pg_extension_config_dump('ratchet.queues', 'where name <> ''default'''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.workflows', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.steps', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.runs', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.queue_claims', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.messages', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.events', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.schedules', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.run_id_seq', ''); -- @extension-only
select pg_catalog.pg_extension_config_dump('ratchet.message_id_seq', ''); -- @extension-only

-- Plain tables for the baselines (bench/run.py runs this once per database).
--
-- The raw floor mirrors what Ratchet stores per workflow and per step, with
-- nothing but a primary key: no status indexes, no checks, no functions.

create table raw_workflows (
  workflow_id text primary key,
  name        text not null,
  queue       text not null,
  status      text not null,
  input       jsonb not null,
  output      jsonb,
  run_id      bigint,
  worker_id   text,
  created_at  timestamptz not null,
  updated_at  timestamptz not null
);

create table raw_steps (
  workflow_id text not null,
  step_id     int not null,
  name        text not null,
  output      jsonb,
  recorded_at timestamptz not null,
  primary key (workflow_id, step_id)
);

-- A minimal LISTEN/NOTIFY queue: the baseline of the latency measurements.
create table raw_queue (
  id         bigserial primary key,
  status     text not null default 'enqueued',
  payload    jsonb not null default '{}',
  created_at timestamptz not null default clock_timestamp()
);
create index raw_queue_enqueued_idx on raw_queue (id) where status = 'enqueued';

-- What a worker writes while it runs a workflow: step checkpoints, the end of
-- the run (finish, fail), and suspension (durable sleep and waits).
--
-- Fencing: every function here first locks (ratchet._fence) the workflow row and checks that
-- run_id is the workflow's current run and the workflow is running. The lock
-- is what makes the check hold until commit: claim() cannot hand the workflow
-- to another run in between, and a write that waited for a reclaim sees the
-- new run_id and fails with RT002.

-- The fence, the one rule every write of a run passes: lock the workflow row
-- (FOR SHARE for step writes, FOR NO KEY UPDATE when the row itself changes)
-- and check that p_run_id is its current, live run. (record_step and finish
-- test the "ok" case inline, in the statement that locks the row, and call
-- _fence only when it fails: the hot path saves the nested call.) o_outcome: 'ok',
-- 'unknown' (RT004), 'cancelled' (RT006), 'stale_run' (RT002) or
-- 'deadline_passed' (RT006). p_raise: raise that error instead of returning
-- an outcome other than 'ok' (the single-row functions); the batched
-- functions (sql/55_batch.sql) pass false and report the outcome per row.
create function ratchet._fence(
  p_workflow_id text, p_run_id bigint, p_for_update boolean, p_raise boolean,
  out o_wf ratchet.workflows, out o_outcome text)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_run_id is null then
    perform ratchet._raise('RT005', 'run_id must not be NULL',
      'pass the run_id that claim() returned for this workflow');
  end if;
  if p_for_update then
    select * into o_wf from ratchet.workflows w where w.workflow_id = p_workflow_id
       for no key update;
  else
    select * into o_wf from ratchet.workflows w where w.workflow_id = p_workflow_id
       for share;
  end if;
  if not found then
    o_outcome := 'unknown';
    if p_raise then
      perform ratchet._raise('RT004', pg_catalog.format('unknown workflow "%s"', p_workflow_id),
        'the workflow may have been purged');
    end if;
  elsif o_wf.status = 'cancelled' then
    o_outcome := 'cancelled';
    if p_raise then
      perform ratchet._raise('RT006', pg_catalog.format('workflow "%s" was cancelled', p_workflow_id),
        'stop running it; nothing of this run is recorded from now on');
    end if;
  elsif o_wf.status <> 'running' or o_wf.run_id is distinct from p_run_id then
    o_outcome := 'stale_run';
    if p_raise then
      perform ratchet._raise('RT002',
        pg_catalog.format('run %s of workflow "%s" is no longer current (status %s, current run %s)',
                          p_run_id, p_workflow_id, o_wf.status, coalesce(o_wf.run_id::text, 'none')),
        'the lease was lost and the workflow reclaimed, or the run ended; stop running it');
    end if;
  elsif o_wf.deadline is not null and o_wf.deadline < ratchet.now() then
    o_outcome := 'deadline_passed';
    if p_raise then
      perform ratchet._raise('RT006',
        pg_catalog.format('workflow "%s" passed its deadline (%s)', p_workflow_id, o_wf.deadline),
        'stop running it; the next claim() or heartbeat() cancels it');
    end if;
  else
    o_outcome := 'ok';
  end if;
end;
$$;

comment on function ratchet._fence(text, bigint, boolean, boolean) is
  'Internal: the fence. Lock a workflow row and check that run_id is its live run; outcome '
  'ok/unknown/cancelled/stale_run/deadline_passed, or (p_raise) RT004/RT006/RT002/RT006.';

create function ratchet._check_step_args(p_step_id int, p_name text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_step_id is null or p_step_id < 0 then
    perform ratchet._raise('RT005', pg_catalog.format('step_id must be >= 0, got %s', p_step_id),
      'steps are numbered 0, 1, 2... in the order the workflow calls them');
  end if;
  perform ratchet._check_name(p_name, 'step name');
end;
$$;

comment on function ratchet._check_step_args(int, text) is
  'Internal: validate step_id and step name.';

-- Insert a step row; RT003 if that step is already recorded. A retried write
-- (the connection dropped after the first one committed) finds the row this
-- same run recorded with the same name, output and error: that is success,
-- not RT003. A row of another run, or other content, is never overwritten.
create function ratchet._insert_step(
  p_workflow_id text, p_run_id bigint, p_step_id int, p_name text,
  p_output jsonb, p_error jsonb, p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_existing ratchet.steps;
begin
  insert into ratchet.steps (workflow_id, step_id, name, output, error, run_id, recorded_at)
  values (p_workflow_id, p_step_id, p_name, p_output, p_error, p_run_id, p_now)
  on conflict (workflow_id, step_id) do nothing;
  if not found then
    select * into v_existing from ratchet.steps s
     where s.workflow_id = p_workflow_id and s.step_id = p_step_id;
    if v_existing.run_id = p_run_id and v_existing.name = p_name
       and v_existing.output is not distinct from p_output
       and v_existing.error is not distinct from p_error then
      return;  -- this run's own write, retried
    end if;
    perform ratchet._raise('RT003',
      pg_catalog.format('step %s of workflow "%s" is already recorded (as "%s")',
                        p_step_id, p_workflow_id, v_existing.name),
      'a recorded step is never overwritten; replay it from the claimed steps');
  end if;
end;
$$;

comment on function ratchet._insert_step(text, bigint, int, text, jsonb, jsonb, timestamptz) is
  'Internal: insert a step checkpoint, RT003 if it exists.';

-- A retried end of a run: the connection dropped after finish() or fail()
-- committed, and the worker sends it again. Returns the run's outcome when
-- run p_run_id already ended with one of p_outcomes and the same content
-- (finish: the workflow's output; fail: the run's error), else NULL (the
-- caller then fences as usual: RT002). Only this run's own row counts, so a
-- retry never passes for another run's end.
create function ratchet._retried_end(
  p_workflow_id text, p_run_id bigint, p_outcomes text[], p_output jsonb, p_error jsonb)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_outcome text;
begin
  select r.outcome into v_outcome
    from ratchet.runs r join ratchet.workflows w using (workflow_id)
   where r.workflow_id = p_workflow_id and r.run_id = p_run_id
     and r.outcome = any (p_outcomes)
     and (case when r.outcome = 'succeeded' then w.status = 'succeeded'
                                               and w.output is not distinct from p_output
               else r.error is not distinct from p_error end);
  return v_outcome;
end;
$$;

comment on function ratchet._retried_end(text, bigint, text[], jsonb, jsonb) is
  'Internal: the outcome of run_id when it already ended the workflow with this content '
  '(a retried finish or fail), else NULL.';

-- record_step: the checkpoint. One statement, one round trip.
create function ratchet.record_step(
  workflow_id text,
  run_id      bigint,
  step_id     int,
  name        text,
  output      jsonb default null,
  error       jsonb default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_run_id      alias for $2;
  p_step_id     alias for $3;
  p_name        alias for $4;
  p_output      alias for $5;
  p_error       alias for $6;
  v_now timestamptz := ratchet.now();
begin
  -- Hot path: inline checks; the helpers run only to raise the precise error.
  if p_step_id is null or p_step_id < 0 or p_name is null or pg_catalog.btrim(p_name) = ''
     or pg_catalog.octet_length(p_name) > 200 then
    perform ratchet._check_step_args(p_step_id, p_name);
  end if;
  if pg_catalog.pg_column_size(p_output) > 1048576 or pg_catalog.pg_column_size(p_error) > 1048576
     or pg_catalog.jsonb_path_exists(p_output, 'strict $.**{101}')
     or pg_catalog.jsonb_path_exists(p_error, 'strict $.**{101}') then  -- see _check_payload
    perform ratchet._check_payload(p_output, 'step output');
    perform ratchet._check_payload(p_error, 'step error');
  end if;
  -- Hot path: the fence's "ok" case and the insert in one statement. The
  -- row lock (FOR SHARE) keeps the run current until commit, as _fence's
  -- does; a claim that changed the row meanwhile fails the re-checked WHERE.
  -- Anything else (unknown, not running, another run, deadline passed, step
  -- already recorded: a retry or a duplicate) inserts nothing and takes the
  -- slow path, where _fence raises the precise error and _insert_step tells a
  -- retried write from RT003. Two nested calls less per checkpoint.
  insert into ratchet.steps (workflow_id, step_id, name, output, error, run_id, recorded_at)
  select w.workflow_id, p_step_id, p_name, p_output, p_error, p_run_id, v_now
    from ratchet.workflows w
   where w.workflow_id = p_workflow_id and w.status = 'running' and w.run_id = p_run_id
     and (w.deadline is null or w.deadline >= v_now)
     for share of w
  on conflict (workflow_id, step_id) do nothing;
  if not found then
    perform ratchet._fence(p_workflow_id, p_run_id, false, true);
    perform ratchet._insert_step(p_workflow_id, p_run_id, p_step_id, p_name, p_output, p_error,
                                 v_now);
  end if;
end;
$$;

comment on function ratchet.record_step(text, bigint, int, text, jsonb, jsonb) is
  'Checkpoint a step result (output) or failure (error). RT002 if run_id is not current, '
  'RT003 if the step is already recorded, RT006 if the workflow was cancelled.';

-- finish: the run succeeded; the workflow ends with this output.
create function ratchet.finish(workflow_id text, run_id bigint, output jsonb default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_run_id      alias for $2;
  p_output      alias for $3;
  v_now timestamptz := ratchet.now();
  v_wf  ratchet.workflows;
begin
  if pg_catalog.pg_column_size(p_output) > 1048576
     or pg_catalog.jsonb_path_exists(p_output, 'strict $.**{101}') then  -- hot path: see record_step
    perform ratchet._check_payload(p_output, 'output');
  end if;
  -- Hot path: lock the row and test the fence's "ok" case inline (see
  -- record_step); only otherwise ask whether this is a retry of this run's
  -- own finish (the reply was lost: success), else _fence raises the error.
  select * into v_wf from ratchet.workflows w where w.workflow_id = p_workflow_id
     for no key update;
  if not found or v_wf.status <> 'running' or v_wf.run_id is distinct from p_run_id
     or v_wf.deadline < v_now then
    if ratchet._retried_end(p_workflow_id, p_run_id, '{succeeded}', p_output, null) is not null then
      return;
    end if;
    select (f.o_wf).* into v_wf from ratchet._fence(p_workflow_id, p_run_id, true, true) f;
  end if;
  perform ratchet._end_run(v_wf, 'succeeded', p_output, null, v_now);
end;
$$;

comment on function ratchet.finish(text, bigint, jsonb) is
  'End the run: the workflow succeeded with this output. Fenced like record_step.';

-- Retry policies. A policy is JSON: {"max_attempts": n (runs in all; NULL or
-- absent: no limit of its own), "initial_delay": seconds (1), "backoff_factor":
-- f (2), "max_delay": seconds (300), "jitter": 0..1 (0: none; 0.2 takes up to
-- 20% off each delay at random)}. A workflow stores its policy (retry_policy)
-- and fail() applies it; a client retrying a step in-process asks
-- retry_delay() with the step's policy. No client computes a delay.

-- RT005 unless p_policy is NULL or a valid policy object.
create function ratchet._check_retry_policy(p_policy jsonb)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_key text;
begin
  if p_policy is null then
    return;
  end if;
  if pg_catalog.jsonb_typeof(p_policy) <> 'object' then
    perform ratchet._raise('RT005', pg_catalog.format('retry policy must be a JSON object, got %s', p_policy),
      'e.g. ''{"max_attempts": 5, "initial_delay": 1, "backoff_factor": 2, "max_delay": 60}''');
  end if;
  for v_key in select k from pg_catalog.jsonb_object_keys(p_policy) as k loop
    if v_key not in ('max_attempts', 'initial_delay', 'backoff_factor', 'max_delay', 'jitter') then
      perform ratchet._raise('RT005', pg_catalog.format('unknown retry policy key "%s"', v_key),
        'the keys are max_attempts, initial_delay, backoff_factor, max_delay and jitter');
    end if;
    if pg_catalog.jsonb_typeof(p_policy -> v_key) not in ('number', 'null') then
      perform ratchet._raise('RT005', pg_catalog.format('retry policy key "%s" must be a number, got %s',
                                                        v_key, p_policy -> v_key),
        'delays are in seconds, e.g. "initial_delay": 0.5');
    end if;
  end loop;
  if (p_policy ->> 'max_attempts')::numeric < 1
     or (p_policy ->> 'max_attempts')::numeric <> pg_catalog.trunc((p_policy ->> 'max_attempts')::numeric)
     or (p_policy ->> 'max_attempts')::numeric > 2147483647 then
    perform ratchet._raise('RT005', pg_catalog.format('max_attempts must be a whole number >= 1, got %s',
                                                      p_policy -> 'max_attempts'),
      'max_attempts counts every run: 1 means no retry');
  end if;
  if (p_policy ->> 'initial_delay')::numeric not between 0 and 3153600000
     or (p_policy ->> 'max_delay')::numeric not between 0 and 3153600000 then
    perform ratchet._raise('RT005', 'initial_delay and max_delay must be between 0 and 100 years (3153600000 s)',
      'delays are in seconds, e.g. "max_delay": 300');
  end if;
  if (p_policy ->> 'backoff_factor')::numeric not between 1 and 1000 then
    perform ratchet._raise('RT005', pg_catalog.format('backoff_factor must be between 1 and 1000, got %s',
                                                      p_policy -> 'backoff_factor'),
      '1 retries at a constant interval; 2 doubles it each time');
  end if;
  if (p_policy ->> 'jitter')::numeric not between 0 and 1 then
    perform ratchet._raise('RT005', pg_catalog.format('jitter must be between 0 and 1, got %s',
                                                      p_policy -> 'jitter'),
      '0.2 takes up to 20% off each delay at random');
  end if;
end;
$$;

comment on function ratchet._check_retry_policy(jsonb) is
  'Internal: RT005 unless the argument is NULL or a valid retry policy.';

-- retry_delay: how long to wait before attempt p_attempt + 1 after attempt
-- p_attempt (1 = the first) failed: initial_delay * backoff_factor^(attempt-1),
-- capped by max_delay, less up to jitter of it at random. NULL when the
-- policy's max_attempts is used up (no retry).
create function ratchet.retry_delay(policy jsonb, attempt int)
returns interval
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_policy  alias for $1;
  p_attempt alias for $2;
  v_delay double precision;
begin
  perform ratchet._check_retry_policy(p_policy);
  if p_policy is null then
    perform ratchet._raise('RT005', 'policy must not be NULL', 'pass ''{}'' for the defaults');
  end if;
  if p_attempt is null or p_attempt < 1 then
    perform ratchet._raise('RT005', pg_catalog.format('attempt must be >= 1, got %s', p_attempt),
      'attempt is the number of the attempt that failed: 1 for the first');
  end if;
  if p_attempt >= (p_policy ->> 'max_attempts')::int then
    return null;
  end if;
  v_delay := least(
    coalesce((p_policy ->> 'initial_delay')::double precision, 1)
      * coalesce((p_policy ->> 'backoff_factor')::double precision, 2)
        ^ least(p_attempt - 1, 100),
    coalesce((p_policy ->> 'max_delay')::double precision, 300));
  v_delay := v_delay * (1 - coalesce((p_policy ->> 'jitter')::double precision, 0) * pg_catalog.random());
  return pg_catalog.make_interval(secs => v_delay);
end;
$$;

comment on function ratchet.retry_delay(jsonb, int) is
  'Delay before the next attempt after attempt number attempt failed, from a retry policy '
  '(exponential backoff capped by max_delay, optional jitter); NULL when no attempt is left.';

-- RT005 unless the arguments of fail() are valid.
create function ratchet._check_fail_args(p_error jsonb, p_retry_in interval, p_retryable boolean)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform ratchet._check_payload(p_error, 'error');
  if p_retry_in < interval '0' or p_retry_in > interval '100 years' then
    perform ratchet._raise('RT005', pg_catalog.format('retry_in must be between 0 and 100 years, got %s', p_retry_in),
      'pass NULL to use the workflow''s retry policy, or a delay such as ''5 seconds''');
  end if;
  if p_retryable is null then
    perform ratchet._raise('RT005', 'retryable must not be NULL',
      'retryable => false fails the workflow for good');
  end if;
end;
$$;

comment on function ratchet._check_fail_args(jsonb, interval, boolean) is
  'Internal: RT005 unless error, retry_in and retryable are valid arguments of fail().';

-- The end of a failed run (p_wf: its row, locked and fenced by the caller):
-- retried by the policy or retry_in while attempts are left, else failed (dead
-- when retry_in was given). fail() and fail_many() (sql/55_batch.sql).
create function ratchet._fail_run(
  p_wf ratchet.workflows, p_error jsonb, p_retry_in interval, p_retryable boolean,
  p_policy jsonb, p_now timestamptz)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_delay  interval := p_retry_in;
  v_status text;
begin
  if v_delay is null and p_retryable and coalesce(p_wf.retry_policy, p_policy) is not null then
    v_delay := ratchet.retry_delay(coalesce(p_wf.retry_policy, p_policy), p_wf.attempts);
  end if;

  if p_retryable and v_delay is not null and p_wf.attempts < p_wf.max_attempts then
    perform ratchet._requeue(p_wf, p_now + v_delay, null, null, true, p_error, p_now);
    return 'enqueued';
  end if;

  v_status := case when p_retryable and p_retry_in is not null then 'dead' else 'failed' end;
  perform ratchet._end_run(p_wf, v_status, null, p_error, p_now);
  return v_status;
end;
$$;

comment on function ratchet._fail_run(ratchet.workflows, jsonb, interval, boolean, jsonb, timestamptz) is
  'Internal: end a failed, fenced run: re-enqueue it by its retry policy or retry_in, or end it failed/dead.';

-- fail: the run failed. retryable (the default) and a stored retry policy:
-- the workflow is re-enqueued after the policy's delay while it has attempts
-- left (attempts < max_attempts), else it ends failed. retryable false, or no
-- policy: it ends failed. An explicit retry_in overrides the policy's delay
-- (e.g. a Retry-After the client was told); out of attempts it ends dead.
-- retry_policy: the worker's policy for this workflow name, used only when
-- the workflow stores none (started by name: a schedule, another client);
-- its max_attempts then caps the attempts too. Returns the resulting status.
create function ratchet.fail(
  workflow_id text,
  run_id      bigint,
  error       jsonb,
  retry_in     interval default null,
  retryable    boolean default true,
  retry_policy jsonb default null)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_run_id      alias for $2;
  p_error       alias for $3;
  p_retry_in    alias for $4;
  p_retryable   alias for $5;
  p_policy      alias for $6;
  v_now    timestamptz := ratchet.now();
  v_wf     ratchet.workflows;
  v_status text;
begin
  perform ratchet._check_fail_args(p_error, p_retry_in, p_retryable);
  -- a retry of this run's own fail (the reply was lost) returns what it did
  if not exists (select 1 from ratchet.workflows w
                  where w.workflow_id = p_workflow_id and w.run_id = p_run_id) then
    v_status := ratchet._retried_end(p_workflow_id, p_run_id, '{failed,dead,retried}', null, p_error);
    if v_status is not null then
      return case v_status when 'retried' then 'enqueued' else v_status end;
    end if;
  end if;
  select (f.o_wf).* into v_wf from ratchet._fence(p_workflow_id, p_run_id, true, true) f;
  return ratchet._fail_run(v_wf, p_error, p_retry_in, p_retryable, p_policy, v_now);
end;
$$;

comment on function ratchet.fail(text, bigint, jsonb, interval, boolean, jsonb) is
  'End the run with an error. retryable and a stored retry policy (or an explicit retry_in): '
  're-enqueued after the delay while attempts < max_attempts, else failed (dead with '
  'retry_in). retryable false or no policy: failed. retry_policy: the caller''s policy when '
  'the workflow stores none. Returns the new status.';

-- suspend: give the workflow back to its queue until a time, and optionally
-- until a message (wait_for 'message', wait_key = topic) or the end of a child
-- (wait_for 'child', wait_key = child id), whichever comes first. Holds no
-- worker while it waits. Costs no attempt: suspend(until => ratchet.now())
-- is how a worker that shuts down releases a workflow.
create function ratchet.suspend(
  workflow_id text,
  run_id      bigint,
  until       timestamptz,
  wait_for    text default null,
  wait_key    text default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_run_id      alias for $2;
  p_until       alias for $3;
  p_wait_for    alias for $4;
  p_wait_key    alias for $5;
  v_now      timestamptz := ratchet.now();
  v_wf       ratchet.workflows;
  v_key      text := p_wait_key;
  -- a time in the past means now: a run cannot jump ahead in FIFO order
  v_start_at timestamptz := greatest(p_until, v_now);
begin
  if p_until is null then
    perform ratchet._raise('RT005', 'until must not be NULL',
      'pass a time, or ''infinity'' to wait only for the message or child');
  end if;
  if p_until <> 'infinity' and p_until > v_now + interval '100 years' then
    perform ratchet._raise('RT005',
      pg_catalog.format('until must be at most 100 years ahead (or ''infinity''), got %s', p_until),
      'pass a time, or ''infinity'' to wait only for the message or child');
  end if;
  if p_wait_for is not null and p_wait_for not in ('message', 'child') then
    perform ratchet._raise('RT005', pg_catalog.format('wait_for must be NULL, ''message'' or ''child'', got %L', p_wait_for),
      'wait_for => ''message'' with wait_key => topic, or ''child'' with wait_key => child id');
  end if;
  if p_wait_for = 'child' then
    perform ratchet._check_name(p_wait_key, 'wait_key (child workflow id)');
  elsif p_wait_for = 'message' then
    v_key := coalesce(p_wait_key, '');
    if pg_catalog.octet_length(v_key) > 200 then
      perform ratchet._check_name(v_key, 'wait_key (topic)');
    end if;
  end if;
  select (f.o_wf).* into v_wf from ratchet._fence(p_workflow_id, p_run_id, true, true) f;

  if p_until <= v_now or p_wait_for is null then
    perform ratchet._requeue(v_wf, v_start_at, null, null, false, null, v_now);
    return;
  end if;
  perform ratchet._requeue(v_wf, v_start_at, p_wait_for, v_key, false, null, v_now);
  -- The awaited thing may already be there: then wake at once (no lost wake-up).
  if (p_wait_for = 'message' and exists (
        select 1 from ratchet.messages m
         where m.destination_id = p_workflow_id and m.topic = v_key and m.consumed_at is null))
     or (p_wait_for = 'child' and exists (
        select 1 from ratchet.workflows c
         where c.workflow_id = v_key and c.status in ('succeeded', 'failed', 'cancelled', 'dead'))) then
    perform ratchet._wake_waiter(p_workflow_id, p_wait_for, v_key, v_now);
  end if;
end;
$$;

comment on function ratchet.suspend(text, bigint, timestamptz, text, text) is
  'Release the workflow until a time, or until a message (wait_for ''message'') or a child''s '
  'end (wait_for ''child''). The workflow goes back to enqueued and holds no worker.';

-- durable_sleep: the checkpoint of a sleep. The first call records step
-- step_id as {"wake_at": now + seconds} from the database clock; later calls
-- (replays) return the recorded wake time. remaining_seconds is how long is
-- left now; a client sleeps that long in-process or suspends until wake_at.
create function ratchet.durable_sleep(
  workflow_id text,
  run_id      bigint,
  step_id     int,
  seconds     double precision,
  out wake_at timestamptz,
  out remaining_seconds double precision)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_run_id      alias for $2;
  p_step_id     alias for $3;
  p_seconds     alias for $4;
  v_now  timestamptz := ratchet.now();
  v_step ratchet.steps;
begin
  perform ratchet._check_step_args(p_step_id, 'sleep');
  perform ratchet._fence(p_workflow_id, p_run_id, false, true);
  select * into v_step from ratchet.steps s
   where s.workflow_id = p_workflow_id and s.step_id = p_step_id;
  if found then
    if v_step.name <> 'sleep' then
      perform ratchet._raise('RT005',
        pg_catalog.format('step %s of workflow "%s" is recorded as "%s", not a sleep',
                          p_step_id, p_workflow_id, v_step.name),
        'the workflow code changed between runs (non-deterministic)');
    end if;
    wake_at := (v_step.output ->> 'wake_at')::timestamptz;
  else
    -- NaN compares greater than every number, so the upper bound rejects it too
    if p_seconds is null or p_seconds < 0 or p_seconds > 3153600000 then
      perform ratchet._raise('RT005', pg_catalog.format('seconds must be between 0 and 100 years (3153600000), got %s', p_seconds),
        'e.g. seconds => 60');
    end if;
    wake_at := v_now + pg_catalog.make_interval(secs => p_seconds);
    perform ratchet._insert_step(p_workflow_id, p_run_id, p_step_id, 'sleep',
      pg_catalog.jsonb_build_object('wake_at', wake_at), null, v_now);
  end if;
  remaining_seconds := greatest(0, extract(epoch from wake_at - v_now)::double precision);
end;
$$;

comment on function ratchet.durable_sleep(text, bigint, int, double precision) is
  'Record (first call) or read (replay) a sleep step; returns wake_at and the seconds left.';

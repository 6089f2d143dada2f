-- Starting and reading workflows.

-- start_workflow: insert a workflow, or find the one with this id.
--
-- The workflow_id is the idempotency key: starting an id that exists returns
-- it unchanged (RT005 if it belongs to a workflow of another name). A
-- dedup_key is unique among the live (enqueued, running) workflows of a
-- queue: a second live one raises RT001; once the first ends the key is free.
-- retry_policy (see ratchet.retry_delay) is stored with the workflow; its
-- max_attempts is the workflow's max_attempts unless that is given.
-- app_version: the starting application's version, kept on the workflow.
create function ratchet.start_workflow(
  name         text,
  input        jsonb default '{}',
  workflow_id  text default null,
  queue        text default 'default',
  priority     int default 0,
  dedup_key    text default null,
  start_at     timestamptz default null,
  timeout      interval default null,
  max_attempts int default null,
  parent_id    text default null,
  retry_policy jsonb default null,
  app_version  text default null,
  trace_context jsonb default null)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
  p_name         alias for $1;
  p_input        alias for $2;
  p_workflow_id  alias for $3;
  p_queue        alias for $4;
  p_priority     alias for $5;
  p_dedup_key    alias for $6;
  p_start_at     alias for $7;
  p_timeout      alias for $8;
  p_max_attempts alias for $9;
  p_parent_id    alias for $10;
  p_retry_policy alias for $11;
  p_app_version  alias for $12;
  p_trace_context alias for $13;
  v_now      timestamptz := ratchet.now();
  v_id       text := coalesce(p_workflow_id, pg_catalog.gen_random_uuid()::text);
  -- a start_at in the past means now: it cannot jump ahead of workflows
  -- already waiting in FIFO order (priority is the lever for that)
  v_start_at timestamptz := greatest(coalesce(p_start_at, v_now), v_now);
  v_inserted text;
  v_existing ratchet.workflows;
begin
  -- Hot path: one expression that is true for every bad argument (and for
  -- any retry policy); only then do the checks below run, to raise the
  -- precise error. PL/pgSQL sets up each expression once per transaction,
  -- so a dozen IFs cost more than the insert. (NULL optional arguments make
  -- their terms NULL, which is not true.)
  if p_name is null or pg_catalog.btrim(p_name) = '' or pg_catalog.octet_length(p_name) > 200
     or pg_catalog.btrim(v_id) = '' or pg_catalog.octet_length(v_id) > 200
     or p_input is null or pg_catalog.pg_column_size(p_input) > 1048576
     or pg_catalog.jsonb_path_exists(p_input, 'strict $.**{101}')
     or p_priority is null or p_priority < 0
     or pg_catalog.btrim(p_dedup_key) = '' or pg_catalog.octet_length(p_dedup_key) > 200
     or not pg_catalog.isfinite(p_start_at) or p_start_at > v_now + interval '100 years'
     or p_timeout <= interval '0' or p_timeout > interval '100 years'
     or p_max_attempts < 1 or p_retry_policy is not null
     or pg_catalog.octet_length(p_app_version) > 200 then
    perform ratchet._check_name(p_name, 'workflow name');
    perform ratchet._check_name(v_id, 'workflow_id');
    perform ratchet._check_payload(p_input, 'input');
    if p_input is null then
      perform ratchet._raise('RT005', 'input must not be NULL', 'pass ''{}'' for no input');
    end if;
    if p_priority is null or p_priority < 0 then
      perform ratchet._raise('RT005', pg_catalog.format('priority must be >= 0, got %s', p_priority),
        '0 is the highest priority; larger numbers run later');
    end if;
    if p_dedup_key is not null then
      perform ratchet._check_name(p_dedup_key, 'dedup_key');
    end if;
    if p_start_at is not null and (not pg_catalog.isfinite(p_start_at)
                                   or p_start_at > v_now + interval '100 years') then
      perform ratchet._raise('RT005',
        pg_catalog.format('start_at must be a finite time at most 100 years ahead, got %s', p_start_at),
        'pass NULL to start now, or e.g. start_at => now() + interval ''1 hour''');
    end if;
    if p_timeout is not null and (p_timeout <= interval '0' or p_timeout > interval '100 years') then
      perform ratchet._raise('RT005', pg_catalog.format('timeout must be positive and at most 100 years, got %s', p_timeout),
        'e.g. timeout => ''10 minutes''');
    end if;
    if p_max_attempts is not null and p_max_attempts < 1 then
      perform ratchet._raise('RT005', pg_catalog.format('max_attempts must be >= 1, got %s', p_max_attempts),
        'NULL uses the default (10)');
    end if;
    if p_retry_policy is not null then
      perform ratchet._check_retry_policy(p_retry_policy);
    end if;
    if pg_catalog.octet_length(p_app_version) > 200 then
      perform ratchet._check_name(p_app_version, 'app_version');
    end if;
  end if;
  if not exists (select 1 from ratchet.queues q where q.name = p_queue) then
    perform ratchet._check_queue(p_queue);
  end if;
  if p_parent_id is not null
     and not exists (select 1 from ratchet.workflows w where w.workflow_id = p_parent_id) then
    perform ratchet._raise('RT004', pg_catalog.format('unknown parent workflow "%s"', p_parent_id),
      'parent_id must name an existing workflow');
  end if;

  -- ON CONFLICT DO NOTHING arbitrates on both the primary key and the live
  -- dedup index without a subtransaction; which one fired is checked below.
  insert into ratchet.workflows as w
    (workflow_id, name, queue, input, priority, dedup_key, max_attempts, retry_policy,
     app_version, start_at, deadline, parent_id, created_at, updated_at, trace_context)
  values
    (v_id, p_name, p_queue, p_input, p_priority, p_dedup_key,
     coalesce(p_max_attempts, (p_retry_policy ->> 'max_attempts')::int, 10),
     p_retry_policy - 'max_attempts', p_app_version, v_start_at, v_now + p_timeout,
     p_parent_id, v_now, v_now, p_trace_context)
  on conflict do nothing
  returning w.workflow_id into v_inserted;

  if v_inserted is null then
    select * into v_existing from ratchet.workflows w where w.workflow_id = v_id;
    if found then
      if v_existing.name <> p_name then
        perform ratchet._raise('RT005',
          pg_catalog.format('workflow_id "%s" already belongs to a workflow named "%s"',
                            v_id, v_existing.name),
          'workflow ids are idempotency keys; use a new id for a different workflow');
      end if;
      return v_id;
    end if;
    perform ratchet._raise('RT001',
      pg_catalog.format('dedup_key "%s" is already active on queue "%s"', p_dedup_key, p_queue),
      'wait for the active workflow with this key to end, or use another key');
  end if;

  if v_start_at <= v_now then
    perform ratchet._wake_queue(p_queue);
  end if;
  return v_id;
end;
$$;

comment on function ratchet.start_workflow(text, jsonb, text, text, int, text, timestamptz, interval, int, text, jsonb, text, jsonb) is
  'Start a workflow (or return the existing one with this workflow_id). retry_policy: how '
  'fail() retries it (its max_attempts sets the budget unless max_attempts is given). Raises '
  'RT001 for an active dedup_key, RT005 for bad arguments or an unknown queue.';

-- start_workflows: bulk start in one statement (one round trip, one notify).
create function ratchet.start_workflows(
  name         text,
  inputs       jsonb[],
  queue        text default 'default',
  workflow_ids text[] default null)
returns text[]
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_name         alias for $1;
  p_inputs       alias for $2;
  p_queue        alias for $3;
  p_workflow_ids alias for $4;
  v_now timestamptz := ratchet.now();
  v_ids text[];
  v_bad int;
  v_clash text;
begin
  perform ratchet._check_name(p_name, 'workflow name');
  perform ratchet._check_queue(p_queue);
  if p_inputs is null then
    perform ratchet._raise('RT005', 'inputs must not be NULL', 'pass an array of jsonb inputs');
  end if;
  if pg_catalog.array_ndims(p_inputs) > 1 or pg_catalog.array_ndims(p_workflow_ids) > 1
     or pg_catalog.array_lower(p_inputs, 1) <> 1 or pg_catalog.array_lower(p_workflow_ids, 1) <> 1 then
    perform ratchet._raise('RT005', 'inputs and workflow_ids must be one-dimensional arrays indexed from 1',
      'pass array[''{}''::jsonb, ...], not a nested array; one element per workflow');
  end if;
  if pg_catalog.cardinality(p_inputs) > 10000 then
    perform ratchet._raise('RT005',
      pg_catalog.format('at most 10000 workflows per start_workflows call, got %s', pg_catalog.cardinality(p_inputs)),
      'split the inputs into batches of 10000 or fewer');
  end if;
  if p_workflow_ids is not null
     and coalesce(pg_catalog.array_length(p_workflow_ids, 1), 0)
         <> coalesce(pg_catalog.array_length(p_inputs, 1), 0) then
    perform ratchet._raise('RT005', 'workflow_ids and inputs must have the same length',
      'pass one workflow_id per input, or NULL to generate ids');
  end if;

  select pg_catalog.array_agg(coalesce(p_workflow_ids[i.ord], pg_catalog.gen_random_uuid()::text)
                              order by i.ord)
    into v_ids
    from pg_catalog.generate_subscripts(p_inputs, 1) as i(ord);

  select count(*) into v_bad
    from unnest(p_inputs, v_ids) as t(input, id)
   where t.input is null or t.id is null or pg_catalog.btrim(t.id) = ''
      or pg_catalog.octet_length(t.id) > 200 or pg_catalog.pg_column_size(t.input) > 1048576
      or pg_catalog.jsonb_path_exists(t.input, 'strict $.**{101}');
  if v_bad > 0 then
    perform ratchet._raise('RT005',
      pg_catalog.format('%s of the inputs or workflow_ids are invalid (NULL, empty, too long, over 1 MiB or nested over 100 levels)', v_bad),
      'every input must be non-NULL jsonb under 1 MiB and 100 levels of nesting; every id 1-200 bytes');
  end if;

  insert into ratchet.workflows as w
    (workflow_id, name, queue, input, start_at, created_at, updated_at)
  select t.id, p_name, p_queue, t.input, v_now, v_now, v_now
    from unnest(p_inputs, v_ids) as t(input, id)
  on conflict do nothing;

  -- ids that already existed must belong to the same workflow name
  select w.workflow_id into v_clash
    from ratchet.workflows w
   where w.workflow_id = any(v_ids) and w.name <> p_name
   limit 1;
  if v_clash is not null then
    perform ratchet._raise('RT005',
      pg_catalog.format('workflow_id "%s" already belongs to a workflow of another name', v_clash),
      'workflow ids are idempotency keys; use new ids for a different workflow');
  end if;

  if coalesce(pg_catalog.array_length(v_ids, 1), 0) > 0 then
    perform ratchet._wake_queue(p_queue);
  end if;
  return coalesce(v_ids, '{}');
end;
$$;

comment on function ratchet.start_workflows(text, jsonb[], text, text[]) is
  'Start many workflows of one name in one statement; returns their ids in input order '
  '(existing ids are returned as they are).';

-- get_workflow: the workflow row, or RT004.
create function ratchet.get_workflow(workflow_id text)
returns ratchet.workflows
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  v_wf ratchet.workflows;
begin
  select * into v_wf from ratchet.workflows w where w.workflow_id = p_workflow_id;
  if not found then
    perform ratchet._raise('RT004', pg_catalog.format('unknown workflow "%s"', p_workflow_id),
      'check the id: select workflow_id from ratchet.workflows order by created_at desc');
  end if;
  return v_wf;
end;
$$;

comment on function ratchet.get_workflow(text) is
  'The workflow row; RT004 if there is none.';

-- get_steps: the recorded steps of a workflow, in order (RT004 if unknown).
create function ratchet.get_steps(workflow_id text)
returns setof ratchet.steps
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
begin
  perform ratchet.get_workflow(p_workflow_id);
  return query
    select * from ratchet.steps s where s.workflow_id = p_workflow_id order by s.step_id;
end;
$$;

comment on function ratchet.get_steps(text) is
  'Recorded step checkpoints of a workflow in step order; RT004 if the workflow is unknown.';

-- get_runs: every claim of a workflow, oldest first (RT004 if unknown).
create function ratchet.get_runs(workflow_id text)
returns setof ratchet.runs
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
begin
  perform ratchet.get_workflow(p_workflow_id);
  return query
    select * from ratchet.runs r where r.workflow_id = p_workflow_id order by r.run_id;
end;
$$;

comment on function ratchet.get_runs(text) is
  'Runs (claims) of a workflow, oldest first: worker, times, outcome and error; RT004 if unknown.';

-- wait_result: block (polling the table) until the workflow has ended or the
-- timeout passes; returns its status with output and error. Clients that can
-- LISTEN on "ratchet.ended" should do that instead and poll only as fallback.
create function ratchet.wait_result(workflow_id text, timeout interval default interval '0')
returns table (status text, output jsonb, error jsonb)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_timeout     alias for $2;
  v_until timestamptz := pg_catalog.clock_timestamp() + coalesce(p_timeout, interval '0');
  v_pause double precision := 0.005;
  v_wf ratchet.workflows;
begin
  if p_timeout > interval '1 day' then
    perform ratchet._raise('RT005', pg_catalog.format('timeout must be at most 1 day, got %s', p_timeout),
      'wait in a loop, or LISTEN on "ratchet.ended" instead of holding a session for longer');
  end if;
  loop
    v_wf := ratchet.get_workflow(p_workflow_id);
    exit when v_wf.status in ('succeeded', 'failed', 'cancelled', 'dead')
           or pg_catalog.clock_timestamp() >= v_until;
    perform pg_catalog.pg_sleep(least(v_pause,
      greatest(0.001, extract(epoch from v_until - pg_catalog.clock_timestamp())::double precision)));
    v_pause := least(v_pause * 2, 0.25);
  end loop;
  return query select v_wf.status, v_wf.output, v_wf.error;
end;
$$;

comment on function ratchet.wait_result(text, interval) is
  'Wait up to timeout for the workflow to end; returns (status, output, error). '
  'Returns the current status with NULL output if it has not ended by then.';

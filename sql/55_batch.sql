-- Batched writes: many checkpoints, finishes or failures (of many workflows
-- and runs) in one call and one commit, and many starts with options per item.
--
-- Every row is fenced on its own run_id under its own row lock by the one
-- fence (ratchet._fence, sql/50_runs.sql), exactly as record_step, finish and
-- fail are; a row that fails the fence is not written and gets its outcome in
-- the result, and the other rows are written: a stale run is rejected alone,
-- not the whole batch. Outcomes:
--   ok               written
--   duplicate        record_steps: that step is already recorded (RT003 alone)
--   stale_run        run_id is not the workflow's current run (RT002 alone)
--   cancelled        the workflow was cancelled (RT006 alone)
--   deadline_passed  the workflow passed its deadline (RT006 alone)
--   unknown          no such workflow (RT004 alone)
-- Bad arguments (NULL or mismatched arrays, an invalid step name or payload)
-- raise RT005 for the whole call, naming the item: they are the caller's bug.
-- Nothing of a call is visible until its transaction commits; a caller tells
-- a step it may continue only after that commit is acknowledged.
--
-- Rows are locked in workflow_id order, so two batches that share workflows
-- (a stale worker and the one that reclaimed them) cannot deadlock.
-- Postgres queues one NOTIFY per distinct channel and payload per transaction
-- and takes the notify lock once at commit, so a batch wakes each queue once
-- and pays the notify lock once.

-- RT005 unless the batch arrays are one-dimensional, from 1, of one length
-- (p_optional ones may be NULL) and at most 10000 long. Returns the length.
create function ratchet._check_batch(p_required anyarray, p_lengths int[], p_what text)
returns int
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_n int := coalesce(pg_catalog.cardinality(p_required), 0);
begin
  if p_required is null then
    perform ratchet._raise('RT005', pg_catalog.format('%s must not be NULL', p_what),
      'pass one array element per item; ''{}'' for none');
  end if;
  if pg_catalog.array_ndims(p_required) > 1 or pg_catalog.array_lower(p_required, 1) <> 1 then
    perform ratchet._raise('RT005', pg_catalog.format('%s must be a one-dimensional array indexed from 1', p_what),
      'pass array[...], not a nested array; one element per item');
  end if;
  if v_n > 10000 then
    perform ratchet._raise('RT005', pg_catalog.format('at most 10000 items per call, got %s', v_n),
      'split the batch into calls of 10000 items or fewer');
  end if;
  if exists (select 1 from pg_catalog.unnest(p_lengths) as l(n) where l.n is not null and l.n <> v_n) then
    perform ratchet._raise('RT005', pg_catalog.format('every array of the batch must have %s elements like %s', v_n, p_what),
      'pass one element per item in every array (NULL elements where an item has none), or NULL for an optional array');
  end if;
  return v_n;
end;
$$;

comment on function ratchet._check_batch(anyarray, int[], text) is
  'Internal: RT005 unless the arrays of a batched call are one-dimensional, of one length, at most 10000.';

-- record_steps: many checkpoints (record_step) in one call. outputs and
-- errors may be NULL (all NULL). Returns one row per item, in item order.
create function ratchet.record_steps(
  workflow_ids text[],
  run_ids      bigint[],
  step_ids     int[],
  names        text[],
  outputs      jsonb[] default null,
  errors       jsonb[] default null)
returns table (ord int, workflow_id text, step_id int, outcome text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
  p_workflow_ids alias for $1;
  p_run_ids      alias for $2;
  p_step_ids     alias for $3;
  p_names        alias for $4;
  p_outputs      alias for $5;
  p_errors       alias for $6;
  v_now     timestamptz := ratchet.now();
  v_n       int;
  v_i       int;
  v_outcome text[];
  v_fence   text;
begin
  v_n := ratchet._check_batch(p_workflow_ids, array[pg_catalog.cardinality(p_run_ids),
           pg_catalog.cardinality(p_step_ids), pg_catalog.cardinality(p_names),
           pg_catalog.cardinality(p_outputs), pg_catalog.cardinality(p_errors)], 'workflow_ids');
  if p_run_ids is null or p_step_ids is null or p_names is null then
    perform ratchet._raise('RT005', 'run_ids, step_ids and names must not be NULL',
      'pass one element per item');
  end if;
  v_outcome := pg_catalog.array_fill(null::text, array[v_n]);
  -- arguments first (the same checks as record_step), then the fence per row
  for v_i in 1 .. v_n loop
    if p_workflow_ids[v_i] is null or p_step_ids[v_i] is null or p_step_ids[v_i] < 0
       or p_names[v_i] is null or pg_catalog.btrim(p_names[v_i]) = ''
       or pg_catalog.octet_length(p_names[v_i]) > 200
       or pg_catalog.pg_column_size(p_outputs[v_i]) > 1048576
       or pg_catalog.pg_column_size(p_errors[v_i]) > 1048576
       or pg_catalog.jsonb_path_exists(p_outputs[v_i], 'strict $.**{101}')
       or pg_catalog.jsonb_path_exists(p_errors[v_i], 'strict $.**{101}') then
      perform ratchet._check_batch_item(v_i, p_workflow_ids[v_i], p_step_ids[v_i], p_names[v_i],
                                        p_outputs[v_i], p_errors[v_i]);
    end if;
  end loop;
  for v_i in
    select i from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i
     order by p_workflow_ids[i], i
  loop
    select f.o_outcome into v_fence
      from ratchet._fence(p_workflow_ids[v_i], p_run_ids[v_i], false, false) f;
    v_outcome[v_i] := v_fence;
  end loop;

  -- one insert for every fenced row; a step already recorded (or twice in
  -- this batch: the first one wins) is never overwritten
  with ins as (
    insert into ratchet.steps as s (workflow_id, step_id, name, output, error, run_id, recorded_at)
    select p_workflow_ids[i], p_step_ids[i], p_names[i], p_outputs[i], p_errors[i], p_run_ids[i], v_now
      from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i
     where v_outcome[i] = 'ok'
     order by i
    on conflict do nothing
    returning s.workflow_id, s.step_id
  )
  select pg_catalog.array_agg(case when v_outcome[i] <> 'ok' then v_outcome[i]
                                   when exists (select 1 from ins
                                                 where ins.workflow_id = p_workflow_ids[i]
                                                   and ins.step_id = p_step_ids[i])
                                        and not exists (select 1 from pg_catalog.generate_subscripts(p_workflow_ids, 1) as j
                                                         where j < i and v_outcome[j] = 'ok'
                                                           and p_workflow_ids[j] = p_workflow_ids[i]
                                                           and p_step_ids[j] = p_step_ids[i])
                                   then 'ok'
                                   -- this run's own write, retried (the connection
                                   -- dropped after the first call committed): as
                                   -- in _insert_step, same run and content is ok
                                   when exists (select 1 from ratchet.steps s
                                                 where s.workflow_id = p_workflow_ids[i]
                                                   and s.step_id = p_step_ids[i]
                                                   and s.run_id = p_run_ids[i]
                                                   and s.name = p_names[i]
                                                   and s.output is not distinct from p_outputs[i]
                                                   and s.error is not distinct from p_errors[i])
                                   then 'ok' else 'duplicate' end order by i)
    into v_outcome
    from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i;

  return query
    select i, p_workflow_ids[i], p_step_ids[i], v_outcome[i]
      from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i order by i;
end;
$$;

comment on function ratchet.record_steps(text[], bigint[], int[], text[], jsonb[], jsonb[]) is
  'Checkpoint many steps (of any workflows and runs) in one call: each row fenced on its own '
  'run_id like record_step; returns per item ok, duplicate, stale_run, cancelled, '
  'deadline_passed or unknown (ok also for a step this run already recorded with the same '
  'content: a retried call). RT005 for bad arguments.';

-- RT005 naming the item: the precise error of record_step's checks.
create function ratchet._check_batch_item(
  p_ord int, p_workflow_id text, p_step_id int, p_name text, p_output jsonb, p_error jsonb)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_message text;
  v_hint    text;
begin
  perform ratchet._check_name(p_workflow_id, 'workflow_id');
  perform ratchet._check_step_args(p_step_id, p_name);
  perform ratchet._check_payload(p_output, 'step output');
  perform ratchet._check_payload(p_error, 'step error');
exception when sqlstate 'RT005' then
  get stacked diagnostics v_message = message_text, v_hint = pg_exception_hint;
  perform ratchet._raise('RT005', pg_catalog.format('item %s: %s', p_ord, v_message), v_hint);
end;
$$;

comment on function ratchet._check_batch_item(int, text, int, text, jsonb, jsonb) is
  'Internal: RT005 naming the item of a batch whose step arguments are invalid.';

-- finish_many: many finishes (finish) in one call. outputs may be NULL.
create function ratchet.finish_many(
  workflow_ids text[],
  run_ids      bigint[],
  outputs      jsonb[] default null)
returns table (ord int, workflow_id text, outcome text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
  p_workflow_ids alias for $1;
  p_run_ids      alias for $2;
  p_outputs      alias for $3;
  v_now     timestamptz := ratchet.now();
  v_n       int;
  v_i       int;
  v_wf      ratchet.workflows;
  v_f       record;
  v_fence   text;
  v_outcome text[];
begin
  v_n := ratchet._check_batch(p_workflow_ids, array[pg_catalog.cardinality(p_run_ids),
           pg_catalog.cardinality(p_outputs)], 'workflow_ids');
  if p_run_ids is null then
    perform ratchet._raise('RT005', 'run_ids must not be NULL', 'pass one run_id per workflow_id');
  end if;
  for v_i in 1 .. v_n loop
    if p_workflow_ids[v_i] is null
       or pg_catalog.pg_column_size(p_outputs[v_i]) > 1048576
       or pg_catalog.jsonb_path_exists(p_outputs[v_i], 'strict $.**{101}') then
      perform ratchet._check_batch_item(v_i, p_workflow_ids[v_i], 0, 'finish', p_outputs[v_i], null);
    end if;
  end loop;
  v_outcome := pg_catalog.array_fill(null::text, array[v_n]);
  for v_i in
    select i from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i
     order by p_workflow_ids[i], i
  loop
    select f.o_wf as wf, f.o_outcome as outcome into v_f
      from ratchet._fence(p_workflow_ids[v_i], p_run_ids[v_i], true, false) f;
    v_wf := v_f.wf;
    v_fence := v_f.outcome;
    if v_fence = 'ok' then
      perform ratchet._end_run(v_wf, 'succeeded', p_outputs[v_i], null, v_now);
    elsif v_fence = 'stale_run'
          -- a retry of this run's own finish (the batch committed, its reply
          -- was lost) is ok, like finish(); not an item repeated in this call
          and not exists (select 1 from pg_catalog.generate_subscripts(p_workflow_ids, 1) as j
                           where v_outcome[j] is not null and p_workflow_ids[j] = p_workflow_ids[v_i])
          and ratchet._retried_end(p_workflow_ids[v_i], p_run_ids[v_i], '{succeeded}',
                                   p_outputs[v_i], null) is not null then
      v_fence := 'ok';
    end if;
    v_outcome[v_i] := v_fence;
  end loop;
  return query
    select i, p_workflow_ids[i], v_outcome[i]
      from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i order by i;
end;
$$;

comment on function ratchet.finish_many(text[], bigint[], jsonb[]) is
  'Finish many runs in one call: each fenced on its own run_id like finish; returns per item '
  'ok (also for a retry of this run''s own committed finish), stale_run, cancelled, '
  'deadline_passed or unknown (a repeated item: stale_run).';

-- fail_many: many failures (fail) in one call. retry_ins, retryables (NULL
-- element: true) and retry_policies may be NULL. status: what fail() returns
-- (enqueued, failed, dead) for the rows whose outcome is ok.
create function ratchet.fail_many(
  workflow_ids   text[],
  run_ids        bigint[],
  errors         jsonb[],
  retry_ins      interval[] default null,
  retryables     boolean[] default null,
  retry_policies jsonb[] default null)
returns table (ord int, workflow_id text, outcome text, status text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_ids alias for $1;
  p_run_ids      alias for $2;
  p_errors       alias for $3;
  p_retry_ins    alias for $4;
  p_retryables   alias for $5;
  p_policies     alias for $6;
  v_now     timestamptz := ratchet.now();
  v_n       int;
  v_i       int;
  v_wf      ratchet.workflows;
  v_f       record;
  v_fence   text;
  v_outcome text[];
  v_status  text[];
  v_at      int;
  v_message text;
  v_hint    text;
begin
  v_n := ratchet._check_batch(p_workflow_ids, array[pg_catalog.cardinality(p_run_ids),
           pg_catalog.cardinality(p_errors), pg_catalog.cardinality(p_retry_ins),
           pg_catalog.cardinality(p_retryables), pg_catalog.cardinality(p_policies)], 'workflow_ids');
  if p_run_ids is null or p_errors is null then
    perform ratchet._raise('RT005', 'run_ids and errors must not be NULL', 'pass one element per workflow_id');
  end if;
  begin
    for v_i in 1 .. v_n loop
      v_at := v_i;
      perform ratchet._check_name(p_workflow_ids[v_i], 'workflow_id');
      perform ratchet._check_fail_args(p_errors[v_i], p_retry_ins[v_i], coalesce(p_retryables[v_i], true));
      if p_policies[v_i] is not null then
        perform ratchet._check_retry_policy(p_policies[v_i]);
      end if;
    end loop;
  exception when sqlstate 'RT005' then
    get stacked diagnostics v_message = message_text, v_hint = pg_exception_hint;
    perform ratchet._raise('RT005', pg_catalog.format('item %s: %s', v_at, v_message), v_hint);
  end;
  v_outcome := pg_catalog.array_fill(null::text, array[v_n]);
  v_status := v_outcome;
  for v_i in
    select i from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i
     order by p_workflow_ids[i], i
  loop
    select f.o_wf as wf, f.o_outcome as outcome into v_f
      from ratchet._fence(p_workflow_ids[v_i], p_run_ids[v_i], true, false) f;
    v_wf := v_f.wf;
    v_fence := v_f.outcome;
    if v_fence = 'ok' then
      v_status[v_i] := ratchet._fail_run(v_wf, p_errors[v_i], p_retry_ins[v_i],
                                         coalesce(p_retryables[v_i], true), p_policies[v_i], v_now);
    elsif v_fence = 'stale_run'
          -- a retry of this run's own fail (the batch committed, its reply was
          -- lost) is ok with what it did, like fail(); not an item repeated here
          and not exists (select 1 from pg_catalog.generate_subscripts(p_workflow_ids, 1) as j
                           where v_outcome[j] is not null and p_workflow_ids[j] = p_workflow_ids[v_i]) then
      v_status[v_i] := ratchet._retried_end(p_workflow_ids[v_i], p_run_ids[v_i],
                                            '{failed,dead,retried}', null, p_errors[v_i]);
      if v_status[v_i] is not null then
        v_fence := 'ok';
        if v_status[v_i] = 'retried' then
          v_status[v_i] := 'enqueued';
        end if;
      end if;
    end if;
    v_outcome[v_i] := v_fence;
  end loop;
  return query
    select i, p_workflow_ids[i], v_outcome[i], v_status[i]
      from pg_catalog.generate_subscripts(p_workflow_ids, 1) as i order by i;
end;
$$;

comment on function ratchet.fail_many(text[], bigint[], jsonb[], interval[], boolean[], jsonb[]) is
  'Fail many runs in one call: each fenced on its own run_id like fail; returns per item the '
  'outcome (ok, stale_run, cancelled, deadline_passed, unknown) and, when ok, fail''s status '
  '(ok also for a run that this same failure already ended: a resent batch).';

-- finish_and_claim: finish_many, then claim() for the slots that frees, in
-- one call and one commit. The finish rows come first (ord = the item,
-- outcome as finish_many); then one row per claimed workflow (ord NULL,
-- outcome 'claimed', the columns of ratchet.claimed).
--
-- A retried call (the connection broke after an earlier call with these
-- finishes committed, so the worker never saw its reply): finish_many reports
-- the rows that run already finished with the same output as ok, and the
-- workflows that earlier call claimed for worker_id, which the worker never
-- started, are returned again (their leases renewed) before claim() takes
-- max_count minus those, so a retry neither loses them until their leases
-- expire nor claims their slots twice. They are found by the transaction
-- that wrote them: the earlier call's runs rows (finished and claimed) carry
-- its xmin, and nothing on this path runs in a subtransaction (an exception
-- block would give its rows another xid). A recovering call rewrites those
-- rows (no change but their xmin), so a retry of the retry finds the claims
-- of both. Only rows still held by worker_id under the run that call gave
-- them count; frozen xids (<= 2) never match.
create function ratchet.finish_and_claim(
  workflow_ids text[],
  run_ids      bigint[],
  outputs      jsonb[],
  queues       text[],
  worker_id    text,
  max_count    int default 1,
  lease        interval default interval '30 seconds',
  names        text[] default null,
  app_version  text default null)
returns table (ord int, workflow_id text, outcome text, name text, input jsonb, run_id bigint,
               attempt int, steps jsonb)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  v_xid  xid;
  v_held int := 0;
  v_now  timestamptz;
begin
  -- before finish_many ends anything: a run of the batch that already ended
  -- with this output was ended by an earlier call (its xmin names it)
  select r.xmin into v_xid
    from pg_catalog.generate_subscripts($1, 1) as i
    join ratchet.runs r on r.workflow_id = $1[i] and r.run_id = $2[i]
   where r.outcome = 'succeeded'
     and ratchet._retried_end($1[i], $2[i], '{succeeded}', $3[i], null) is not null
   limit 1;
  return query
    select f.ord, f.workflow_id, f.outcome, null::text, null::jsonb, null::bigint, null::int, null::jsonb
      from ratchet.finish_many($1, $2, $3) f;
  if v_xid is not null and v_xid::text::bigint > 2 and $5 is not null then
    v_now := ratchet.now();
    -- the earlier call's finished runs take this transaction's xmin too
    update ratchet.runs r set ended_at = r.ended_at
     where r.xmin = v_xid and (r.workflow_id, r.run_id) in (
             select $1[i], $2[i] from pg_catalog.generate_subscripts($1, 1) as i);
    return query
      with held as (
        select w.workflow_id, w.run_id from ratchet.workflows w
          join ratchet.runs r on r.workflow_id = w.workflow_id and r.run_id = w.run_id
         where w.worker_id = $5 and w.status = 'running' and r.ended_at is null
           and r.xmin = v_xid
         order by w.workflow_id
         for no key update of w
      ), renewed as (
        update ratchet.workflows w
           set lease_expires_at = v_now + $7, updated_at = v_now
          from held h
         where w.workflow_id = h.workflow_id
        returning w.workflow_id, w.name, w.input, w.run_id, w.attempts
      ), touched as (
        update ratchet.runs r set claimed_at = r.claimed_at
          from held h
         where r.workflow_id = h.workflow_id and r.run_id = h.run_id
      )
      -- steps: the same JSON as ratchet._claim_row builds (kept inline there:
      -- a nested call costs claim's hot path; keep the two alike)
      select null::int, w.workflow_id, 'claimed'::text, w.name, w.input, w.run_id, w.attempts,
             (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'step_id', s.step_id, 'name', s.name, 'output', s.output, 'error', s.error)
                       order by s.step_id), '[]'::jsonb)
                from ratchet.steps s where s.workflow_id = w.workflow_id)
        from renewed w order by w.workflow_id;
    get diagnostics v_held = row_count;
  end if;
  return query
    select null::int, c.workflow_id, 'claimed'::text, c.name, c.input, c.run_id, c.attempt, c.steps
      from ratchet.claim($4, $5, case when v_held = 0 then $6 else greatest($6 - v_held, 0) end, $7, $8, $9) c;
end;
$$;

comment on function ratchet.finish_and_claim(text[], bigint[], jsonb[], text[], text, int, interval, text[], text) is
  'finish_many the given runs, then claim up to max_count workflows, in one call and one commit: '
  'the finish outcomes first, then the claimed workflows (outcome ''claimed''). A retry of a call '
  'that committed returns again what that call claimed and the worker never saw.';

-- start_workflows(items): many workflows, each with its own options, in one
-- call. items: a JSON array of objects with the arguments of start_workflow:
-- name (required), input, workflow_id, queue, priority, dedup_key, start_at
-- (a timestamp) or delay (seconds), timeout (seconds), max_attempts,
-- parent_id, retry_policy, app_version. Returns the ids in item order. Any
-- bad item raises its error (RT005, RT001 for an active dedup_key) for the
-- whole call, its message naming the item; nothing is started then.
create function ratchet.start_workflows(items jsonb)
returns text[]
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_items alias for $1;
  v_now     timestamptz := ratchet.now();
  v_item    jsonb;
  v_ord     int := 0;
  v_key     text;
  v_ids     text[] := '{}'::text[];
  v_start   timestamptz;
  v_state   text;
  v_message text;
  v_hint    text;
begin
  if p_items is null or pg_catalog.jsonb_typeof(p_items) <> 'array' then
    perform ratchet._raise('RT005', 'items must be a JSON array of objects',
      'e.g. ''[{"name": "report", "input": {"day": 1}, "priority": 5, "delay": 60}]''');
  end if;
  if pg_catalog.jsonb_array_length(p_items) > 10000 then
    perform ratchet._raise('RT005',
      pg_catalog.format('at most 10000 workflows per start_workflows call, got %s', pg_catalog.jsonb_array_length(p_items)),
      'split the items into batches of 10000 or fewer');
  end if;
  begin
    for v_item in select e from pg_catalog.jsonb_array_elements(p_items) as e loop
      v_ord := v_ord + 1;
      if pg_catalog.jsonb_typeof(v_item) <> 'object' then
        perform ratchet._raise('RT005', 'an item must be a JSON object', 'e.g. {"name": "report"}');
      end if;
      for v_key in select k from pg_catalog.jsonb_object_keys(v_item) as k loop
        if v_key not in ('name', 'input', 'workflow_id', 'queue', 'priority', 'dedup_key', 'start_at',
                         'delay', 'timeout', 'max_attempts', 'parent_id', 'retry_policy', 'app_version') then
          perform ratchet._raise('RT005', pg_catalog.format('unknown item key "%s"', v_key),
            'the keys are name, input, workflow_id, queue, priority, dedup_key, start_at, delay, '
            'timeout, max_attempts, parent_id, retry_policy and app_version');
        end if;
        if v_key in ('name', 'workflow_id', 'queue', 'dedup_key', 'start_at', 'parent_id', 'app_version')
           and pg_catalog.jsonb_typeof(v_item -> v_key) not in ('string', 'null') then
          perform ratchet._raise('RT005', pg_catalog.format('item key "%s" must be a string, got %s', v_key, v_item -> v_key),
            'e.g. "queue": "default"');
        end if;
        if v_key in ('priority', 'delay', 'timeout', 'max_attempts')
           and pg_catalog.jsonb_typeof(v_item -> v_key) not in ('number', 'null') then
          perform ratchet._raise('RT005', pg_catalog.format('item key "%s" must be a number, got %s', v_key, v_item -> v_key),
            'delay and timeout are in seconds, e.g. "delay": 30');
        end if;
      end loop;
      if v_item ? 'start_at' and v_item ? 'delay' then
        perform ratchet._raise('RT005', 'an item takes start_at or delay, not both',
          'delay is seconds from now; start_at a timestamp');
      end if;
      if (v_item ->> 'priority')::numeric <> pg_catalog.trunc((v_item ->> 'priority')::numeric)
         or (v_item ->> 'max_attempts')::numeric <> pg_catalog.trunc((v_item ->> 'max_attempts')::numeric)
         or (v_item ->> 'delay')::numeric not between 0 and 3153600000
         or (v_item ->> 'timeout')::numeric > 3153600000 then
        perform ratchet._raise('RT005', 'priority and max_attempts must be whole numbers, delay and timeout at most 100 years',
          'delay and timeout are in seconds, e.g. "delay": 30');
      end if;
      v_start := case when v_item ? 'delay'
                      then v_now + pg_catalog.make_interval(secs => (v_item ->> 'delay')::double precision)
                      else (v_item ->> 'start_at')::timestamptz end;
      v_ids := v_ids || ratchet.start_workflow(
        name         => v_item ->> 'name',
        input        => coalesce(v_item -> 'input', '{}'),
        workflow_id  => v_item ->> 'workflow_id',
        queue        => coalesce(v_item ->> 'queue', 'default'),
        priority     => coalesce((v_item ->> 'priority')::numeric::int, 0),
        dedup_key    => v_item ->> 'dedup_key',
        start_at     => v_start,
        timeout      => pg_catalog.make_interval(secs => (v_item ->> 'timeout')::double precision),
        max_attempts => (v_item ->> 'max_attempts')::numeric::int,
        parent_id    => v_item ->> 'parent_id',
        retry_policy => case when pg_catalog.jsonb_typeof(v_item -> 'retry_policy') = 'null' then null
                             else v_item -> 'retry_policy' end,
        app_version  => v_item ->> 'app_version');
    end loop;
  exception when sqlstate 'RT001' or sqlstate 'RT004' or sqlstate 'RT005'
                 or sqlstate '22007' or sqlstate '22008' or sqlstate '22003' then
    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                            v_hint = pg_exception_hint;
    if v_state not like 'RT%' then
      v_state := 'RT005';
      v_hint := 'start_at must be a timestamp such as "2030-01-01T00:00:00Z"; numbers must fit an int';
    end if;
    perform ratchet._raise(v_state, pg_catalog.format('item %s: %s', v_ord, v_message), v_hint);
  end;
  return v_ids;
end;
$$;

comment on function ratchet.start_workflows(jsonb) is
  'Start many workflows with options per item (a JSON array of objects: name, input, '
  'workflow_id, queue, priority, dedup_key, start_at or delay, timeout, max_attempts, '
  'parent_id, retry_policy, app_version) in one call; returns their ids in item order. '
  'A bad item raises its error for the whole call, naming the item.';

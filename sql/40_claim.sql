-- Claiming, leases and recovery; and the end of every run.
--
-- claim() is the only entry point a worker polls. In one call it
--   1. cancels live workflows of its queues whose deadline passed (bounded),
--   2. per queue (skipping paused ones), under a row lock on the queue only
--      when the queue has limits, computes how many it may take,
--   3. reclaims running workflows whose lease expired (recovery: a new
--      run_id, attempts + 1, or dead when out of attempts), then
--   4. takes due enqueued workflows by priority, FIFO within a priority,
-- all with FOR UPDATE SKIP LOCKED so concurrent claimers never wait on or
-- double-claim a row. No reaper process exists: any live worker recovers any
-- dead worker's workflows.
--
-- Each rule has one function:
--   _claim_row   claim one locked row: deadline, recovery, new run and lease
--                (claim and claim_workflow)
--   _end_run     a run ends the workflow: succeeded, failed, dead, cancelled
--                (finish, fail, recovery, cancel, deadlines)
--   _requeue     a run hands the workflow back to its queue: retry, sleep,
--                wait, release (fail, suspend)
--   _wake_waiter an awaited message or child is there: the waiter is due now
--                (send, the end of a child, suspend)

-- A workflow that is enqueued and waits for p_wait_for/p_wait_key becomes due
-- now. Returns whether it was waiting for that.
create function ratchet._wake_waiter(
  p_workflow_id text, p_wait_for text, p_wait_key text, p_now timestamptz)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_queue text;
begin
  update ratchet.workflows w
     set start_at = p_now, wait_for = null, wait_key = null, updated_at = p_now
   where w.workflow_id = p_workflow_id and w.status = 'enqueued'
     and w.wait_for = p_wait_for and w.wait_key = p_wait_key
  returning w.queue into v_queue;
  if v_queue is null then
    return false;
  end if;
  perform ratchet._wake_queue(v_queue);
  return true;
end;
$$;

comment on function ratchet._wake_waiter(text, text, text, timestamptz) is
  'Internal: make a workflow waiting for this message topic or child due now, and wake its queue.';

-- The end of a workflow (p_wf: its row, locked by the caller): the one place
-- that moves it to an end state, closes and clears its run (ratchet.runs gets
-- the outcome), tells waiters on "ratchet.ended" and wakes a parent that
-- waits for it.
create function ratchet._end_run(
  p_wf ratchet.workflows, p_status text, p_output jsonb, p_error jsonb, p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_wf.run_id is not null then
    update ratchet.runs r
       set ended_at = p_now, outcome = p_status,
           error = case when p_status in ('failed', 'dead') then p_error end
     where r.workflow_id = p_wf.workflow_id and r.run_id = p_wf.run_id;
  end if;
  update ratchet.workflows w
     set status = p_status, output = p_output, error = p_error, ended_at = p_now,
         run_id = null, worker_id = null, lease_expires_at = null,
         wait_for = null, wait_key = null, updated_at = p_now
   where w.workflow_id = p_wf.workflow_id;
  perform ratchet._notify('ratchet.ended', p_wf.workflow_id);
  if p_wf.parent_id is not null then
    perform ratchet._wake_waiter(p_wf.parent_id, 'child', p_wf.workflow_id, p_now);
  end if;
end;
$$;

comment on function ratchet._end_run(ratchet.workflows, text, jsonb, jsonb, timestamptz) is
  'Internal: end a workflow (succeeded, failed, dead, cancelled), clear its run, notify '
  '"ratchet.ended" and wake a parent waiting for it.';

-- The workflow's run stops and the workflow goes back to its queue, due at
-- p_start_at, optionally waiting for a message or child. p_retry: the run
-- failed and is retried (stores p_error, costs an attempt); else it was a
-- suspension (costs nothing). Closes the run in ratchet.runs (retried,
-- suspended, or released when due at once). Wakes the queue when it is due now.
create function ratchet._requeue(
  p_wf ratchet.workflows, p_start_at timestamptz, p_wait_for text, p_wait_key text,
  p_retry boolean, p_error jsonb, p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  update ratchet.runs r
     set ended_at = p_now,
         outcome = case when p_retry then 'retried'
                        when p_start_at <= p_now and p_wait_for is null then 'released'
                        else 'suspended' end,
         error = case when p_retry then p_error end
   where r.workflow_id = p_wf.workflow_id and r.run_id = p_wf.run_id;
  update ratchet.workflows w
     set status = 'enqueued', start_at = p_start_at,
         wait_for = p_wait_for, wait_key = p_wait_key,
         error = case when p_retry then p_error else w.error end,
         attempts = case when p_retry then w.attempts + 1 else w.attempts end,
         run_id = null, worker_id = null, lease_expires_at = null, updated_at = p_now
   where w.workflow_id = p_wf.workflow_id;
  if p_start_at <= p_now then
    perform ratchet._wake_queue(p_wf.queue);
  end if;
end;
$$;

comment on function ratchet._requeue(ratchet.workflows, timestamptz, text, text, boolean, jsonb, timestamptz) is
  'Internal: stop the run and put the workflow back in its queue (retry or suspension).';

-- Cancel a workflow and its live descendants. Returns how many were cancelled.
create function ratchet._cancel_tree(p_workflow_id text, p_now timestamptz, p_error jsonb)
returns int
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_wf    ratchet.workflows;
  v_count int := 0;
begin
  for v_wf in
    with recursive tree(workflow_id) as (
      select p_workflow_id
      union
      select c.workflow_id from ratchet.workflows c join tree t on c.parent_id = t.workflow_id
    )
    select w.* from ratchet.workflows w
     where w.workflow_id in (select tree.workflow_id from tree)
       and w.status in ('enqueued', 'running')
     for no key update of w
  loop
    v_count := v_count + 1;
    perform ratchet._end_run(v_wf, 'cancelled', v_wf.output, coalesce(p_error, v_wf.error), p_now);
  end loop;
  return v_count;
end;
$$;

comment on function ratchet._cancel_tree(text, timestamptz, jsonb) is
  'Internal: cancel a workflow and its live descendants; returns the count.';

-- Cancel (bounded batch) live workflows whose deadline has passed, among the
-- given queues or the given worker's runs.
create function ratchet._expire_deadlines(p_queues text[], p_worker_id text, p_now timestamptz)
returns int
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id text;
  v_count int := 0;
begin
  -- The common case, no deadline passed, in one probe of the partial deadline
  -- index under any plan. (An "exists (... deadline < p_now)" has a generic
  -- plan that scans the whole table expecting a match on the first page: the
  -- claim cost with 100k waiting in bench/run.py.)
  if not coalesce((select min(w.deadline) from ratchet.workflows w
                     where w.deadline is not null and w.status in ('enqueued', 'running')) < p_now,
                  false) then
    return 0;
  end if;
  for v_id in
    select w.workflow_id from ratchet.workflows w
     where w.deadline < p_now and w.status in ('enqueued', 'running')
       and (w.queue = any(p_queues) or w.worker_id = p_worker_id)
     order by w.deadline
     limit 100
     for update skip locked
  loop
    v_count := v_count + ratchet._cancel_tree(v_id, p_now,
      pg_catalog.jsonb_build_object('type', 'DeadlineExceeded',
                                    'message', 'the workflow''s timeout passed'));
  end loop;
  return v_count;
end;
$$;

comment on function ratchet._expire_deadlines(text[], text, timestamptz) is
  'Internal: cancel up to 100 live workflows past their deadline.';

-- Claim one row the caller has locked (an enqueued due workflow, or a running
-- one whose lease expired): cancel it if its deadline passed, move it to dead
-- if it is a recovery out of attempts, else give it a new run and lease.
-- A recovery closes the previous run as lost; the new run gets its row in
-- ratchet.runs. Returns the claimed row, or a row of NULLs when nothing was
-- claimed.
create function ratchet._claim_row(
  p_wf ratchet.workflows, p_worker_id text, p_lease interval, p_now timestamptz,
  p_app_version text)
returns ratchet.claimed
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_claimed  ratchet.claimed;
  v_recovery boolean := p_wf.status = 'running';
begin
  if p_wf.deadline < p_now then
    perform ratchet._cancel_tree(p_wf.workflow_id, p_now,
      pg_catalog.jsonb_build_object('type', 'DeadlineExceeded',
                                    'message', 'the workflow''s timeout passed'));
    return v_claimed;
  end if;
  if v_recovery then
    -- the previous run stopped renewing its lease
    update ratchet.runs r set ended_at = p_now, outcome = 'lost'
     where r.workflow_id = p_wf.workflow_id and r.run_id = p_wf.run_id;
    p_wf.run_id := null;
  end if;
  if v_recovery and p_wf.attempts >= p_wf.max_attempts then
    perform ratchet._end_run(p_wf, 'dead', null, pg_catalog.jsonb_build_object(
        'type', 'MaxAttemptsExceeded',
        'message', pg_catalog.format('lease expired on attempt %s of %s', p_wf.attempts, p_wf.max_attempts),
        'last_error', p_wf.error,
        'worker_id', p_wf.worker_id), p_now);
    return v_claimed;
  end if;

  update ratchet.workflows w
     set status = 'running',
         run_id = pg_catalog.nextval('ratchet.run_id_seq'),
         worker_id = p_worker_id,
         lease_expires_at = p_now + p_lease,
         attempts = case when v_recovery then w.attempts + 1 else greatest(w.attempts, 1) end,
         started_at = coalesce(w.started_at, p_now),
         wait_for = null, wait_key = null,
         updated_at = p_now
   where w.workflow_id = p_wf.workflow_id
  returning w.workflow_id, w.name, w.input, w.run_id, w.attempts
       into v_claimed.workflow_id, v_claimed.name, v_claimed.input, v_claimed.run_id,
            v_claimed.attempt;
  insert into ratchet.runs (workflow_id, run_id, attempt, worker_id, app_version, claimed_at)
  values (p_wf.workflow_id, v_claimed.run_id, v_claimed.attempt, p_worker_id, p_app_version, p_now);

  -- the recorded steps as clients decode them (finish_and_claim's retry
  -- builds the same JSON for the claims it returns again)
  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
           'step_id', s.step_id, 'name', s.name, 'output', s.output, 'error', s.error)
           order by s.step_id), '[]'::jsonb)
    into v_claimed.steps
    from ratchet.steps s
   where s.workflow_id = p_wf.workflow_id;
  return v_claimed;
end;
$$;

comment on function ratchet._claim_row(ratchet.workflows, text, interval, timestamptz, text) is
  'Internal: claim one locked workflow row (deadline, recovery, new run and lease); '
  'returns it with its steps, or NULLs if it was cancelled or moved to dead instead.';

create function ratchet._check_lease(p_worker_id text, p_lease interval)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform ratchet._check_name(p_worker_id, 'worker_id');
  if p_lease is null or p_lease <= interval '0' or p_lease > interval '1 day' then
    perform ratchet._raise('RT005', pg_catalog.format('lease must be between 0 and 1 day, got %s', p_lease),
      'e.g. lease => ''30 seconds''; heartbeat every third of it');
  end if;
end;
$$;

comment on function ratchet._check_lease(text, interval) is
  'Internal: validate worker_id and lease arguments.';

-- claim: see the header of this file. names: the workflow names the worker
-- can run (NULL: any). A workflow whose name no worker passes waits,
-- unclaimed, costing no attempt, until a worker that knows it claims
-- (rolling deploys). app_version: the worker's version, kept on the run.
create function ratchet.claim(
  queues      text[],
  worker_id   text,
  max_count   int default 1,
  lease       interval default interval '30 seconds',
  names       text[] default null,
  app_version text default null)
returns setof ratchet.claimed
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
  p_queues    alias for $1;
  p_worker_id alias for $2;
  p_max_count alias for $3;
  p_lease     alias for $4;
  p_names     alias for $5;
  p_app_version alias for $6;
  v_now     timestamptz := ratchet.now();
  v_need    int;
  v_allowed int;
  v_queue   ratchet.queues;
  v_wf      ratchet.workflows;
  v_claimed ratchet.claimed;
  v_prio    int;
  v_taken   int;
begin
  -- Hot path: inline checks; the helpers run only to raise the precise error.
  -- (one expression on the hot path; see start_workflow)
  if p_worker_id is null or pg_catalog.btrim(p_worker_id) = '' or pg_catalog.octet_length(p_worker_id) > 200
     or p_lease is null or p_lease <= interval '0' or p_lease > interval '1 day'
     or p_queues is null or coalesce(pg_catalog.array_length(p_queues, 1), 0) = 0
     or pg_catalog.cardinality(p_queues) > 100
     or p_max_count is null or p_max_count < 0 or p_max_count > 1000 then
    perform ratchet._check_lease(p_worker_id, p_lease);
    if p_queues is null or coalesce(pg_catalog.array_length(p_queues, 1), 0) = 0
       or pg_catalog.cardinality(p_queues) > 100 then
      perform ratchet._raise('RT005', 'queues must name 1 to 100 queues',
        'e.g. queues => array[''default'']');
    end if;
    perform ratchet._raise('RT005', pg_catalog.format('max_count must be between 0 and 1000, got %s', p_max_count),
      'claim at most as many workflows as the worker has free slots');
  end if;
  v_need := p_max_count;
  if v_need = 0 then
    return;
  end if;

  -- The deadline sweep, only when a deadline passed: one probe of the partial
  -- deadline index here (as in _expire_deadlines) is cheaper than the call.
  if (select min(w.deadline) from ratchet.workflows w
       where w.deadline is not null and w.status in ('enqueued', 'running')) < v_now then
    perform ratchet._expire_deadlines(p_queues, null, v_now);
  end if;

  for v_queue in
    select * from ratchet.queues q where q.name = any(p_queues) and not q.paused order by q.name
  loop
    exit when v_need = 0;
    v_allowed := v_need;

    if v_queue.concurrency is not null or v_queue.worker_concurrency is not null
       or v_queue.rate_limit is not null then
      -- Limited queue: claimers of it take turns, so the counts below are
      -- exact. NO KEY UPDATE does not block concurrent starts.
      perform 1 from ratchet.queues q where q.name = v_queue.name for no key update;
      if v_queue.concurrency is not null then
        v_allowed := least(v_allowed, v_queue.concurrency - (
          select count(*) from ratchet.workflows w
           where w.queue = v_queue.name and w.status = 'running' and w.lease_expires_at >= v_now)::int);
      end if;
      if v_queue.worker_concurrency is not null then
        v_allowed := least(v_allowed, v_queue.worker_concurrency - (
          select count(*) from ratchet.workflows w
           where w.worker_id = p_worker_id and w.status = 'running' and w.queue = v_queue.name
             and w.lease_expires_at >= v_now)::int);
      end if;
      if v_queue.rate_limit is not null then
        delete from ratchet.queue_claims c
         where c.queue = v_queue.name and c.claimed_at <= v_now - v_queue.rate_period;
        v_allowed := least(v_allowed, v_queue.rate_limit - (
          select count(*) from ratchet.queue_claims c where c.queue = v_queue.name)::int);
      end if;
    end if;
    continue when v_allowed <= 0;
    v_taken := 0;

    -- Recovery first: workflows whose worker stopped renewing its lease.
    for v_wf in
      select * from ratchet.workflows w
       where w.queue = v_queue.name and w.status = 'running' and w.lease_expires_at < v_now
         and (p_names is null or w.name = any(p_names))
       order by w.lease_expires_at
       limit 100
       for update skip locked
    loop
      exit when v_taken >= v_allowed;
      v_claimed := ratchet._claim_row(v_wf, p_worker_id, p_lease, v_now, p_app_version);
      if v_claimed.workflow_id is not null then
        return next v_claimed;
        v_taken := v_taken + 1;
      end if;
    end loop;

    -- Then due enqueued workflows: walk the priorities present (one index
    -- probe each) and range-scan the due ones of each, oldest first, so
    -- future (sleeping, delayed) rows are never scanned.
    v_prio := -1;
    while v_taken < v_allowed loop
      select min(w.priority) into v_prio from ratchet.workflows w
       where w.queue = v_queue.name and w.status = 'enqueued' and w.priority > v_prio;
      exit when v_prio is null;
      for v_wf in
        select * from ratchet.workflows w
         where w.queue = v_queue.name and w.status = 'enqueued' and w.priority = v_prio
           and w.start_at <= v_now and (p_names is null or w.name = any(p_names))
         order by w.start_at
         limit v_allowed - v_taken
         for update skip locked
      loop
        v_claimed := ratchet._claim_row(v_wf, p_worker_id, p_lease, v_now, p_app_version);
        if v_claimed.workflow_id is not null then
          return next v_claimed;
          v_taken := v_taken + 1;
        end if;
      end loop;
    end loop;

    if v_queue.rate_limit is not null and v_taken > 0 then
      insert into ratchet.queue_claims (queue, claimed_at)
      select v_queue.name, v_now from pg_catalog.generate_series(1, v_taken);
    end if;
    v_need := v_need - v_taken;
  end loop;
end;
$$;

comment on function ratchet.claim(text[], text, int, interval, text[], text) is
  'Claim up to max_count workflows from the queues for worker_id: expired leases first '
  '(recovery), then due enqueued ones by priority; only workflows named in names (NULL: '
  'any). Honours pause, concurrency, per-worker concurrency and rate limits. Each row '
  'carries the recorded steps; app_version is recorded on the run.';

-- claim_workflow: claim one specific workflow if it is claimable now (enqueued
-- and due, or running with an expired lease). Used to run a workflow in the
-- caller's own process; it bypasses queue limits and pause.
create function ratchet.claim_workflow(
  workflow_id text,
  worker_id   text,
  lease       interval default interval '30 seconds',
  app_version text default null)
returns setof ratchet.claimed
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_worker_id   alias for $2;
  p_lease       alias for $3;
  p_app_version alias for $4;
  v_now     timestamptz := ratchet.now();
  v_wf      ratchet.workflows;
  v_claimed ratchet.claimed;
begin
  perform ratchet._check_lease(p_worker_id, p_lease);
  perform ratchet.get_workflow(p_workflow_id);
  select * into v_wf from ratchet.workflows w
   where w.workflow_id = p_workflow_id
     and ((w.status = 'enqueued' and w.start_at <= v_now)
          or (w.status = 'running' and w.lease_expires_at < v_now))
   for update skip locked;
  if not found then
    return;
  end if;
  v_claimed := ratchet._claim_row(v_wf, p_worker_id, p_lease, v_now, p_app_version);
  if v_claimed.workflow_id is not null then
    return next v_claimed;
  end if;
end;
$$;

comment on function ratchet.claim_workflow(text, text, interval, text) is
  'Claim one given workflow if it is claimable now (bypasses queue limits); no row if not.';

-- heartbeat: renew the leases of a worker's runs in one statement. Runs past
-- their deadline are cancelled instead of renewed. A worker should pass the
-- workflow_ids it is actually running: a claim whose reply was lost (the
-- connection died after the commit) must not be kept alive by heartbeats of a
-- worker that never heard of it; its lease then expires and another worker
-- recovers it. NULL renews every run of worker_id.
create function ratchet.heartbeat(
  worker_id    text,
  lease        interval default interval '30 seconds',
  workflow_ids text[] default null)
returns int
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_worker_id    alias for $1;
  p_lease        alias for $2;
  p_workflow_ids alias for $3;
  v_now   timestamptz := ratchet.now();
  v_count int;
begin
  perform ratchet._check_lease(p_worker_id, p_lease);
  perform ratchet._expire_deadlines('{}', p_worker_id, v_now);
  update ratchet.workflows w
     set lease_expires_at = v_now + p_lease, updated_at = v_now
   where w.worker_id = p_worker_id and w.status = 'running'
     and (p_workflow_ids is null or w.workflow_id = any(p_workflow_ids));
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;

comment on function ratchet.heartbeat(text, interval, text[]) is
  'Renew the leases of worker_id''s running workflows (only workflow_ids when given); '
  'returns how many were renewed.';

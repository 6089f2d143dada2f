-- Claiming, leases and recovery.
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

-- Bookkeeping after a workflow reached an end state: tell waiters, and wake
-- a parent that suspended until this child ended.
create function ratchet._on_end(p_workflow_id text, p_parent_id text, p_now timestamptz)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_parent_queue text;
begin
  perform ratchet._notify('ratchet.ended', p_workflow_id);
  if p_parent_id is not null then
    update ratchet.workflows p
       set start_at = p_now, wait_for = null, wait_key = null, updated_at = p_now
     where p.workflow_id = p_parent_id and p.status = 'enqueued'
       and p.wait_for = 'child' and p.wait_key = p_workflow_id
    returning p.queue into v_parent_queue;
    if v_parent_queue is not null then
      perform ratchet._wake_queue(v_parent_queue);
    end if;
  end if;
end;
$$;

comment on function ratchet._on_end(text, text, timestamptz) is
  'Internal: notify "ratchet.ended" and wake a parent waiting for this child.';

-- Cancel a workflow and its live descendants. Returns how many were cancelled.
create function ratchet._cancel_tree(p_workflow_id text, p_now timestamptz, p_error jsonb)
returns int
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row record;
  v_count int := 0;
begin
  for v_row in
    with recursive tree(workflow_id) as (
      select p_workflow_id
      union
      select c.workflow_id from ratchet.workflows c join tree t on c.parent_id = t.workflow_id
    )
    update ratchet.workflows w
       set status = 'cancelled', error = coalesce(p_error, w.error), ended_at = p_now,
           run_id = null, worker_id = null, lease_expires_at = null,
           wait_for = null, wait_key = null, updated_at = p_now
      from tree
     where w.workflow_id = tree.workflow_id and w.status in ('enqueued', 'running')
    returning w.workflow_id, w.parent_id
  loop
    v_count := v_count + 1;
    perform ratchet._on_end(v_row.workflow_id, v_row.parent_id, p_now);
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

-- Take one row the caller has locked: new run, lease, and the recorded steps.
create function ratchet._take(
  p_workflow_id text, p_worker_id text, p_lease interval, p_now timestamptz, p_recovery boolean)
returns ratchet.claimed
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_claimed ratchet.claimed;
begin
  update ratchet.workflows w
     set status = 'running',
         run_id = pg_catalog.nextval('ratchet.run_id_seq'),
         worker_id = p_worker_id,
         lease_expires_at = p_now + p_lease,
         attempts = case when p_recovery then w.attempts + 1 else greatest(w.attempts, 1) end,
         started_at = coalesce(w.started_at, p_now),
         wait_for = null, wait_key = null,
         updated_at = p_now
   where w.workflow_id = p_workflow_id
  returning w.workflow_id, w.name, w.input, w.run_id, w.attempts
       into v_claimed.workflow_id, v_claimed.name, v_claimed.input, v_claimed.run_id,
            v_claimed.attempt;

  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
           'step_id', s.step_id, 'name', s.name, 'output', s.output, 'error', s.error)
           order by s.step_id), '[]'::jsonb)
    into v_claimed.steps
    from ratchet.steps s
   where s.workflow_id = p_workflow_id;
  return v_claimed;
end;
$$;

comment on function ratchet._take(text, text, interval, timestamptz, boolean) is
  'Internal: give a locked workflow a new run and lease; returns the claimed row with its steps.';

-- A running workflow whose lease expired is being recovered: dead if it is out
-- of attempts (returns false), else claimable (returns true).
create function ratchet._recoverable(p_wf ratchet.workflows, p_now timestamptz)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_wf.attempts < p_wf.max_attempts then
    return true;
  end if;
  update ratchet.workflows w
     set status = 'dead', ended_at = p_now, run_id = null, worker_id = null,
         lease_expires_at = null, updated_at = p_now,
         error = pg_catalog.jsonb_build_object(
           'type', 'MaxAttemptsExceeded',
           'message', pg_catalog.format('lease expired on attempt %s of %s', p_wf.attempts, p_wf.max_attempts),
           'last_error', p_wf.error,
           'worker_id', p_wf.worker_id)
   where w.workflow_id = p_wf.workflow_id;
  perform ratchet._on_end(p_wf.workflow_id, p_wf.parent_id, p_now);
  return false;
end;
$$;

comment on function ratchet._recoverable(ratchet.workflows, timestamptz) is
  'Internal: recovery check; moves a workflow that is out of attempts to dead.';

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

-- claim: see the header of this file.
create function ratchet.claim(
  queues    text[],
  worker_id text,
  max_count int default 1,
  lease     interval default interval '30 seconds')
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
  v_now     timestamptz := ratchet.now();
  v_need    int;
  v_allowed int;
  v_queue   ratchet.queues;
  v_wf      ratchet.workflows;
  v_prio    int;
  v_id      text;
  v_taken   int;
begin
  -- Hot path: inline checks; the helpers run only to raise the precise error.
  if p_worker_id is null or pg_catalog.btrim(p_worker_id) = '' or pg_catalog.octet_length(p_worker_id) > 200
     or p_lease is null or p_lease <= interval '0' or p_lease > interval '1 day' then
    perform ratchet._check_lease(p_worker_id, p_lease);
  end if;
  if p_queues is null or coalesce(pg_catalog.array_length(p_queues, 1), 0) = 0
     or pg_catalog.cardinality(p_queues) > 100 then
    perform ratchet._raise('RT005', 'queues must name 1 to 100 queues',
      'e.g. queues => array[''default'']');
  end if;
  if p_max_count is null or p_max_count < 0 or p_max_count > 1000 then
    perform ratchet._raise('RT005', pg_catalog.format('max_count must be between 0 and 1000, got %s', p_max_count),
      'claim at most as many workflows as the worker has free slots');
  end if;
  v_need := p_max_count;
  if v_need = 0 then
    return;
  end if;

  perform ratchet._expire_deadlines(p_queues, null, v_now);

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
       order by w.lease_expires_at
       limit 100
       for update skip locked
    loop
      exit when v_taken >= v_allowed;
      if ratchet._recoverable(v_wf, v_now) then
        return next ratchet._take(v_wf.workflow_id, p_worker_id, p_lease, v_now, true);
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
      for v_id in
        select w.workflow_id from ratchet.workflows w
         where w.queue = v_queue.name and w.status = 'enqueued' and w.priority = v_prio
           and w.start_at <= v_now
         order by w.start_at
         limit v_allowed - v_taken
         for update skip locked
      loop
        return next ratchet._take(v_id, p_worker_id, p_lease, v_now, false);
        v_taken := v_taken + 1;
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

comment on function ratchet.claim(text[], text, int, interval) is
  'Claim up to max_count workflows from the queues for worker_id: expired leases first '
  '(recovery), then due enqueued ones by priority. Honours pause, concurrency, '
  'per-worker concurrency and rate limits. Each row carries the recorded steps.';

-- claim_workflow: claim one specific workflow if it is claimable now (enqueued
-- and due, or running with an expired lease). Used to run a workflow in the
-- caller's own process; it bypasses queue limits and pause.
create function ratchet.claim_workflow(
  workflow_id text,
  worker_id   text,
  lease       interval default interval '30 seconds')
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
  v_now timestamptz := ratchet.now();
  v_wf  ratchet.workflows;
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
  if v_wf.deadline < v_now then
    perform ratchet._cancel_tree(v_wf.workflow_id, v_now,
      pg_catalog.jsonb_build_object('type', 'DeadlineExceeded',
                                    'message', 'the workflow''s timeout passed'));
    return;
  end if;
  if v_wf.status = 'running' and not ratchet._recoverable(v_wf, v_now) then
    return;
  end if;
  return next ratchet._take(v_wf.workflow_id, p_worker_id, p_lease, v_now, v_wf.status = 'running');
end;
$$;

comment on function ratchet.claim_workflow(text, text, interval) is
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

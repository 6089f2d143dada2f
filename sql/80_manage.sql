-- Managing workflows: cancel, resume, fork, purge.

-- cancel: end a live workflow and its live descendants as cancelled. A worker
-- still running it gets RT006 on its next write. Returns how many workflows
-- were cancelled (0 if it had already ended).
create function ratchet.cancel(workflow_id text)
returns int
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
begin
  perform ratchet.get_workflow(p_workflow_id);
  return ratchet._cancel_tree(p_workflow_id, ratchet.now(),
    pg_catalog.jsonb_build_object('type', 'Cancelled', 'message', 'cancelled by an operator'));
end;
$$;

comment on function ratchet.cancel(text) is
  'Cancel a workflow and its live children; returns how many were cancelled. RT004 if unknown.';

-- resume: put a failed, cancelled or dead workflow back in its queue with its
-- recorded steps kept (they replay) and a fresh attempt budget. The deadline
-- is cleared. A workflow that is already enqueued or running is left alone.
create function ratchet.resume(workflow_id text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  v_now timestamptz := ratchet.now();
  v_wf  ratchet.workflows;
begin
  perform ratchet.get_workflow(p_workflow_id);
  select * into v_wf from ratchet.workflows w where w.workflow_id = p_workflow_id for no key update;
  if v_wf.status in ('enqueued', 'running') then
    return;
  end if;
  if v_wf.status = 'succeeded' then
    perform ratchet._raise('RT005', pg_catalog.format('workflow "%s" already succeeded', p_workflow_id),
      pg_catalog.format('to run it again from a step, fork it: select ratchet.fork(%L, from_step => 0)',
                        p_workflow_id));
  end if;
  if v_wf.dedup_key is not null and exists (
       select 1 from ratchet.workflows w
        where w.queue = v_wf.queue and w.dedup_key = v_wf.dedup_key
          and w.status in ('enqueued', 'running')) then
    perform ratchet._raise('RT001',
      pg_catalog.format('dedup_key "%s" is active on queue "%s" in another workflow', v_wf.dedup_key, v_wf.queue),
      'wait for that workflow to end, then resume this one');
  end if;
  update ratchet.workflows w
     set status = 'enqueued', start_at = v_now, attempts = 0, ended_at = null,
         deadline = null, wait_for = null, wait_key = null, updated_at = v_now
   where w.workflow_id = p_workflow_id;
  perform ratchet._wake_queue(v_wf.queue);
end;
$$;

comment on function ratchet.resume(text) is
  'Re-enqueue a failed, cancelled or dead workflow; recorded steps replay. RT005 if it succeeded.';

-- fork: a new workflow with the same name, input and queue that keeps the
-- checkpoints before from_step, so it re-runs from that step on.
create function ratchet.fork(workflow_id text, from_step int, new_workflow_id text default null)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id     alias for $1;
  p_from_step       alias for $2;
  p_new_workflow_id alias for $3;
  v_now timestamptz := ratchet.now();
  v_src ratchet.workflows;
  v_id  text := coalesce(p_new_workflow_id, pg_catalog.gen_random_uuid()::text);
begin
  v_src := ratchet.get_workflow(p_workflow_id);
  if p_from_step is null or p_from_step < 0 then
    perform ratchet._raise('RT005', pg_catalog.format('from_step must be >= 0, got %s', p_from_step),
      'from_step => 0 re-runs every step');
  end if;
  perform ratchet._check_name(v_id, 'new_workflow_id');
  if exists (select 1 from ratchet.workflows w where w.workflow_id = v_id) then
    perform ratchet._raise('RT005', pg_catalog.format('workflow "%s" already exists', v_id),
      'pass a new id, or NULL to generate one');
  end if;
  perform ratchet._check_queue(v_src.queue);

  insert into ratchet.workflows
    (workflow_id, name, queue, input, priority, max_attempts, retry_policy, start_at,
     parent_id, forked_from, created_at, updated_at)
  values
    (v_id, v_src.name, v_src.queue, v_src.input, v_src.priority, v_src.max_attempts,
     v_src.retry_policy, v_now, v_src.parent_id, v_src.workflow_id, v_now, v_now);
  insert into ratchet.steps (workflow_id, step_id, name, output, error, run_id, recorded_at)
  select v_id, s.step_id, s.name, s.output, s.error, s.run_id, s.recorded_at
    from ratchet.steps s
   where s.workflow_id = v_src.workflow_id and s.step_id < p_from_step;
  perform ratchet._wake_queue(v_src.queue);
  return v_id;
end;
$$;

comment on function ratchet.fork(text, int, text) is
  'Start a copy of a workflow that keeps the checkpoints of steps before from_step.';

-- purge: delete ended workflows older than older_than (of one queue and/or
-- status if given), with their steps, runs, events and messages, at most max_rows
-- workflows per call (call it again while it returns max_rows). A child goes
-- after its parent. Returns how many workflows were deleted. Automatic
-- retention is maintain() (85_retention.sql), which deletes the same way.
create function ratchet.purge(older_than interval, max_rows int default 10000,
                              queue text default null, status text default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_older_than alias for $1;
  p_max_rows   alias for $2;
  p_queue      alias for $3;
  p_status     alias for $4;
  v_before timestamptz;
  v_queue  text;
  v_status text;
  v_ids    text[];
  v_pass   bigint;
  v_total  bigint := 0;
begin
  if p_older_than is null or p_older_than < interval '0' or p_older_than > interval '100 years' then
    perform ratchet._raise('RT005', 'older_than must be between 0 and 100 years',
      'e.g. purge(older_than => ''7 days'')');
  end if;
  if p_max_rows is null or p_max_rows < 1 then
    perform ratchet._raise('RT005', 'max_rows must be at least 1', 'e.g. max_rows => 10000');
  end if;
  if p_queue is not null then
    perform ratchet._check_queue(p_queue);
  end if;
  if p_status is not null and p_status not in ('succeeded', 'failed', 'cancelled', 'dead') then
    perform ratchet._raise('RT005',
      pg_catalog.format('status must be succeeded, failed, cancelled or dead, got %L', p_status),
      'only ended workflows are purged; pass NULL for all four');
  end if;
  v_before := ratchet.now() - p_older_than;
  -- Passes until nothing more is due: a pass frees the children of the
  -- parents it deleted for the next one.
  loop
    v_pass := 0;
    for v_queue in select q.name from ratchet.queues q
                    where p_queue is null or q.name = p_queue order by q.name loop
      foreach v_status in array array['succeeded', 'cancelled', 'failed', 'dead'] loop
        continue when p_status is not null and v_status <> p_status;
        exit when v_total + v_pass >= p_max_rows;
        v_ids := ratchet._due_workflows(v_queue, v_status, v_before,
                                        (p_max_rows - v_total - v_pass)::int);
        continue when v_ids is null;
        v_pass := v_pass + (ratchet._delete_workflows(v_ids)).workflows;
      end loop;
    end loop;
    v_total := v_total + v_pass;
    exit when v_pass = 0 or v_total >= p_max_rows;
  end loop;
  return v_total;
end;
$$;

comment on function ratchet.purge(interval, int, text, text) is
  'Delete up to max_rows ended workflows (and their steps, events, messages) that ended '
  'more than older_than ago, optionally of one queue and status. Returns the count; call '
  'again while it equals max_rows.';

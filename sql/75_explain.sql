-- explain: "why is this workflow not running?" in one call.
--
-- Reads only (tables and the clock), so it is safe to run at any time; it
-- takes no locks and changes nothing. The answer is a JSON object:
--
--   status, name, queue, priority, attempts, max_attempts, start_at, deadline
--   reasons  an array of {reason, message, ...details}, most important first.
--            Codes: ended, running, lease_expired, deadline_passed,
--            waiting_message, waiting_child, sleeping, queue_paused,
--            concurrency_full, rate_limited, due, no_live_worker
--   queue    the queue's limits and their current use: running, holders
--            (worker_id -> running count), claims in the rate window and
--            when the window opens again
--   lease    {worker_id, run_id, expires_at, expired} while running
--   wait     {kind: message|child|time, topic|child_id, child_status, until}
--
-- Ratchet keeps no registry of workers: a worker is visible only while it
-- holds a lease. "no_live_worker" therefore means "no worker holds a live
-- lease on this queue and the workflow has been due for over a minute", a
-- hint, not a proof (an idle worker polling the queue is invisible).
-- Waiting for another workflow's event is a timed wait in the clients (they
-- poll get_event), so it shows as "sleeping".
create function ratchet.explain(workflow_id text)
returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  v_now       timestamptz := ratchet.now();
  v_wf        ratchet.workflows;
  v_q         ratchet.queues;
  v_reasons   jsonb := '[]'::jsonb;
  v_queue     jsonb;
  v_lease     jsonb;
  v_wait      jsonb;
  v_running   int;
  v_holders   jsonb;
  v_claims    int;
  v_opens_at  timestamptz;
  v_child     text;
  v_ahead     bigint;
  v_live      int;
begin
  perform ratchet._check_name(p_workflow_id, 'workflow_id');
  select * into v_wf from ratchet.workflows w where w.workflow_id = p_workflow_id;
  if not found then
    perform ratchet._raise('RT004', pg_catalog.format('unknown workflow "%s"', p_workflow_id),
      'list workflows with: select workflow_id, status from ratchet.workflows order by created_at desc limit 20');
  end if;
  select * into v_q from ratchet.queues q where q.name = v_wf.queue;

  -- The queue and the use of its limits (live leases only, as claim counts).
  select coalesce(pg_catalog.jsonb_object_agg(h.worker_id, h.n), '{}')
    into v_holders
    from (select w.worker_id, pg_catalog.count(*) as n from ratchet.workflows w
           where w.queue = v_wf.queue and w.status = 'running' and w.lease_expires_at >= v_now
           group by w.worker_id) h;
  select coalesce(pg_catalog.sum((h.n)::int), 0)::int into v_running
    from pg_catalog.jsonb_each(v_holders) h(k, n);
  v_live := (select pg_catalog.count(*) from pg_catalog.jsonb_object_keys(v_holders))::int;
  if v_q.rate_limit is not null then
    select pg_catalog.count(*)::int into v_claims from ratchet.queue_claims c
     where c.queue = v_wf.queue and c.claimed_at > v_now - v_q.rate_period;
    if v_claims >= v_q.rate_limit then
      -- the window has room again when enough of the oldest claims age out
      select c.claimed_at + v_q.rate_period into v_opens_at from ratchet.queue_claims c
       where c.queue = v_wf.queue and c.claimed_at > v_now - v_q.rate_period
       order by c.claimed_at offset v_claims - v_q.rate_limit limit 1;
    end if;
  end if;
  v_queue := pg_catalog.jsonb_build_object(
    'name', v_wf.queue, 'paused', coalesce(v_q.paused, false),
    'concurrency', v_q.concurrency, 'worker_concurrency', v_q.worker_concurrency,
    'running', v_running, 'holders', v_holders,
    'rate_limit', v_q.rate_limit, 'rate_period', v_q.rate_period,
    'claims_in_window', v_claims, 'window_opens_at', v_opens_at);

  if v_wf.status = 'running' then
    v_lease := pg_catalog.jsonb_build_object('worker_id', v_wf.worker_id, 'run_id', v_wf.run_id,
      'expires_at', v_wf.lease_expires_at, 'expired', v_wf.lease_expires_at < v_now);
  end if;

  if v_wf.status = 'enqueued' and v_wf.start_at > v_now then
    v_wait := pg_catalog.jsonb_build_object('kind', coalesce(v_wf.wait_for, 'time'),
      'until', case when v_wf.start_at < 'infinity' then v_wf.start_at end);
    if v_wf.wait_for = 'message' then
      v_wait := v_wait || pg_catalog.jsonb_build_object('topic', nullif(v_wf.wait_key, ''));
    elsif v_wf.wait_for = 'child' then
      select w.status into v_child from ratchet.workflows w where w.workflow_id = v_wf.wait_key;
      v_wait := v_wait || pg_catalog.jsonb_build_object('child_id', v_wf.wait_key, 'child_status', v_child);
    end if;
  end if;

  -- Reasons, most important first.
  if v_wf.status in ('succeeded', 'failed', 'cancelled', 'dead') then
    v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'ended',
      'message', pg_catalog.format('the workflow ended (%s) at %s; it will not run again unless resumed or forked',
                                   v_wf.status, v_wf.ended_at),
      'ended_at', v_wf.ended_at);
  else
    if v_wf.deadline is not null and v_wf.deadline < v_now then
      v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'deadline_passed',
        'message', pg_catalog.format('its deadline %s has passed; the next claim or heartbeat on queue "%s" cancels it',
                                     v_wf.deadline, v_wf.queue),
        'deadline', v_wf.deadline);
    end if;
    if v_wf.status = 'running' and v_wf.lease_expires_at >= v_now then
      v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'running',
        'message', pg_catalog.format('running on worker "%s" (run %s); its lease runs until %s',
                                     v_wf.worker_id, v_wf.run_id, v_wf.lease_expires_at),
        'worker_id', v_wf.worker_id, 'until', v_wf.lease_expires_at);
    elsif v_wf.status = 'running' then
      v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'lease_expired',
        'message', pg_catalog.format('worker "%s" stopped renewing its lease at %s; the next claim on queue "%s" recovers it',
                                     v_wf.worker_id, v_wf.lease_expires_at, v_wf.queue),
        'worker_id', v_wf.worker_id, 'since', v_wf.lease_expires_at);
    elsif v_wf.start_at > v_now then
      if v_wf.wait_for = 'message' then
        v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'waiting_message',
          'message', pg_catalog.format('waiting for a message on topic %s%s',
                                       coalesce(pg_catalog.quote_literal(nullif(v_wf.wait_key, '')), '(default)'),
                                       case when v_wf.start_at < 'infinity'
                                            then pg_catalog.format(' until %s', v_wf.start_at) else '' end),
          'topic', nullif(v_wf.wait_key, ''), 'until', case when v_wf.start_at < 'infinity' then v_wf.start_at end);
      elsif v_wf.wait_for = 'child' then
        v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'waiting_child',
          'message', pg_catalog.format('waiting for child workflow "%s" (%s) to end', v_wf.wait_key,
                                       coalesce(v_child, 'unknown')),
          'child_id', v_wf.wait_key, 'child_status', v_child);
      else
        v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'sleeping',
          'message', pg_catalog.format('not due until %s (a delayed start, a durable sleep, a retry backoff or an event poll)',
                                       v_wf.start_at),
          'until', v_wf.start_at);
      end if;
    end if;
    -- Queue-level reasons apply to whatever is claimable now or next.
    if v_wf.status = 'enqueued' or v_wf.lease_expires_at < v_now then
      if coalesce(v_q.paused, false) then
        v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'queue_paused',
          'message', pg_catalog.format('queue "%s" is paused; resume it with select ratchet.resume_queue(%L)',
                                       v_wf.queue, v_wf.queue));
      end if;
      if v_q.concurrency is not null and v_running >= v_q.concurrency then
        v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'concurrency_full',
          'message', pg_catalog.format('queue "%s" runs %s of at most %s; held by %s',
                                       v_wf.queue, v_running, v_q.concurrency, v_holders),
          'running', v_running, 'concurrency', v_q.concurrency, 'holders', v_holders);
      end if;
      if v_opens_at is not null then
        v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'rate_limited',
          'message', pg_catalog.format('queue "%s" made %s claims in the last %s (limit %s); the window opens at %s',
                                       v_wf.queue, v_claims, v_q.rate_period, v_q.rate_limit, v_opens_at),
          'until', v_opens_at);
      end if;
    end if;
    if v_wf.status = 'enqueued' and v_wf.start_at <= v_now then
      select pg_catalog.count(*) into v_ahead from ratchet.workflows w
       where w.queue = v_wf.queue and w.status = 'enqueued' and w.start_at <= v_now
         and (w.priority < v_wf.priority or (w.priority = v_wf.priority and w.start_at < v_wf.start_at));
      v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'due',
        'message', pg_catalog.format('due since %s (%s ago) with %s due ahead of it on queue "%s"',
                                     v_wf.start_at, v_now - v_wf.start_at, v_ahead, v_wf.queue),
        'since', v_wf.start_at, 'ahead', v_ahead);
      if v_live = 0 and v_now - v_wf.start_at > interval '1 minute'
         and not coalesce(v_q.paused, false) then
        v_reasons := v_reasons || pg_catalog.jsonb_build_object('reason', 'no_live_worker',
          'message', pg_catalog.format('no worker holds a lease on queue "%s" and this has waited %s: is a worker '
                                       'serving queue "%s" with workflow "%s" registered running?',
                                       v_wf.queue, v_now - v_wf.start_at, v_wf.queue, v_wf.name));
      end if;
    end if;
  end if;

  return pg_catalog.jsonb_build_object(
    'workflow_id', v_wf.workflow_id, 'status', v_wf.status, 'name', v_wf.name,
    'queue', v_wf.queue, 'priority', v_wf.priority,
    'attempts', v_wf.attempts, 'max_attempts', v_wf.max_attempts,
    'start_at', v_wf.start_at, 'deadline', v_wf.deadline, 'now', v_now,
    'reasons', v_reasons, 'queue_state', v_queue, 'lease', v_lease, 'wait', v_wait,
    -- Ratchet has no worker registry: which workers serve this name is unknown
    'registered_worker', null);
end;
$$;

comment on function ratchet.explain(text) is
  'Why a workflow is (not) running, as JSON: status, lease holder, what it waits for '
  '(message topic, child, time), deadline, queue pause, concurrency (and its holders), '
  'rate window, and a no-live-worker hint. Read-only. RT004 if unknown.';

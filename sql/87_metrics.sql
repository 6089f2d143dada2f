-- Metrics: live workers and per-queue counters, as a view and a function
-- that read the tables only (no counters of their own, nothing to reset).
-- Both use ratchet.now() and the indexes of sql/10_tables.sql.

-- Live workers. Ratchet has no worker registry: a worker shows while it holds
-- a lease; every heartbeat moves lease_expires_at forward and sets
-- updated_at, so the newest updated_at of its running workflows is its last
-- heartbeat (or claim). oldest_claimed_at: when its longest-held current run
-- was claimed (ratchet.runs, by primary key).
create view ratchet.workers as
select w.worker_id,
       pg_catalog.array_agg(distinct w.queue order by w.queue) as queues,
       pg_catalog.count(*)::int as running,
       pg_catalog.max(w.updated_at) as last_heartbeat,
       pg_catalog.max(w.lease_expires_at) as lease_expires_at,
       pg_catalog.max(w.lease_expires_at) < ratchet.now() as expired,
       pg_catalog.min(r.claimed_at) as oldest_claimed_at
  from ratchet.workflows w
  left join ratchet.runs r on r.workflow_id = w.workflow_id and r.run_id = w.run_id
 where w.status = 'running'
 group by w.worker_id;

comment on view ratchet.workers is
  'Live workers (those holding a lease): queues, running workflows, last heartbeat, '
  'lease end, whether it expired, and when the oldest current run was claimed.';

-- Per queue over the last p_window: workflows started (created), ended by
-- outcome, step latency, and the live depth from ratchet.queue_stats.
-- A step's latency is the time from the previous checkpoint of the same run
-- (or the run's claim) to its own recorded_at: Ratchet records when a step
-- ended, not when it began. Latency covers the steps of workflows that ended
-- in the window or are running now (workflows_ended_idx, workflows_running_idx).
create function ratchet.metrics(p_window interval default interval '1 hour')
returns table (
  queue text, started bigint, succeeded bigint, failed bigint, cancelled bigint,
  running bigint, enqueued_due bigint, enqueued_waiting bigint,
  oldest_due_age interval, steps bigint,
  step_p50_seconds double precision, step_p95_seconds double precision,
  step_max_seconds double precision, window_start timestamptz)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_since timestamptz;
begin
  if p_window is null or p_window <= interval '0' then
    perform ratchet._raise('RT005', pg_catalog.format('metrics window must be positive, got %s', p_window),
                           'pass an interval such as ''1 hour''');
  end if;
  v_since := ratchet.now() - p_window;
  return query
  select s.queue, coalesce(c.started, 0), coalesce(e.succeeded, 0), coalesce(e.failed, 0),
         coalesce(e.cancelled, 0), s.running, s.enqueued_due, s.enqueued_waiting,
         s.oldest_due_age, coalesce(l.steps, 0), l.p50, l.p95, l.mx, v_since
    from ratchet.queue_stats s
    left join lateral (
      select pg_catalog.count(*) as started from ratchet.workflows w
       where w.created_at > v_since and w.queue = s.queue
    ) c on true
    left join lateral (
      select pg_catalog.count(*) filter (where w.status = 'succeeded') as succeeded,
             pg_catalog.count(*) filter (where w.status in ('failed', 'dead')) as failed,
             pg_catalog.count(*) filter (where w.status = 'cancelled') as cancelled
        from ratchet.workflows w
       where w.queue = s.queue and w.status in ('succeeded', 'failed', 'dead', 'cancelled')
         and w.ended_at is not null and w.ended_at > v_since
    ) e on true
    left join lateral (
      select pg_catalog.count(*) as steps,
             pg_catalog.percentile_cont(0.5) within group (order by t.secs) as p50,
             pg_catalog.percentile_cont(0.95) within group (order by t.secs) as p95,
             pg_catalog.max(t.secs) as mx
        from (select extract(epoch from st.recorded_at - coalesce(
                       pg_catalog.lag(st.recorded_at) over (
                         partition by st.workflow_id, st.run_id order by st.step_id),
                       r.claimed_at))::float8 as secs
                from ratchet.workflows w
                join ratchet.steps st on st.workflow_id = w.workflow_id
                left join ratchet.runs r on r.workflow_id = st.workflow_id and r.run_id = st.run_id
               where w.queue = s.queue
                 and ((w.ended_at is not null and w.ended_at > v_since
                       and w.status in ('succeeded', 'failed', 'dead', 'cancelled'))
                      or w.status = 'running')
                 and st.recorded_at > v_since) t
       where t.secs is not null
    ) l on true
   order by s.queue;
end;
$$;

comment on function ratchet.metrics(interval) is
  'Per queue over the last p_window: workflows started, succeeded, failed (incl. dead), '
  'cancelled; running and enqueued now; age of the oldest due workflow; step count and '
  'latency percentiles (seconds from the previous checkpoint of the run to the step''s).';

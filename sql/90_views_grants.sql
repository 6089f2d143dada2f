-- Observability views, and least-privilege roles.

-- queue_stats: one row per queue from the live-state partial indexes only, so
-- it stays cheap however much history the workflows table holds.
create view ratchet.queue_stats as
select q.name as queue,
       q.paused,
       q.concurrency,
       q.worker_concurrency,
       q.rate_limit,
       q.rate_period,
       coalesce(l.due, 0)      as enqueued_due,
       coalesce(l.waiting, 0)  as enqueued_waiting,
       coalesce(l.running, 0)  as running,
       coalesce(l.expired, 0)  as running_lease_expired,
       l.oldest_due_at,
       ratchet.now() - l.oldest_due_at as oldest_due_age
  from ratchet.queues q
  left join lateral (
    select count(*) filter (where w.status = 'enqueued' and w.start_at <= ratchet.now()) as due,
           count(*) filter (where w.status = 'enqueued' and w.start_at > ratchet.now())  as waiting,
           count(*) filter (where w.status = 'running') as running,
           count(*) filter (where w.status = 'running' and w.lease_expires_at < ratchet.now()) as expired,
           min(w.start_at) filter (where w.status = 'enqueued' and w.start_at <= ratchet.now()) as oldest_due_at
      from ratchet.workflows w
     where w.queue = q.name and w.status in ('enqueued', 'running')
  ) l on true;

comment on view ratchet.queue_stats is
  'Per queue: limits, due and waiting (sleeping/delayed) enqueued workflows, running ones, '
  'expired leases, and the age of the oldest due workflow.';

-- Roles. ratchet_worker runs workflows; ratchet_client starts, reads and
-- manages them. Tables are readable by both (every operator question is a
-- query) but written only through the functions, which are SECURITY DEFINER.
do $roles$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'ratchet_worker') then
    create role ratchet_worker nologin;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'ratchet_client') then
    create role ratchet_client nologin;
  end if;
end
$roles$;

revoke all on all functions in schema ratchet from public;
grant usage on schema ratchet to ratchet_worker, ratchet_client;
grant select on all tables in schema ratchet to ratchet_worker, ratchet_client;

grant execute on function
  ratchet.version(), ratchet.now(),
  ratchet.start_workflow(text, jsonb, text, text, int, text, timestamptz, interval, int, text),
  ratchet.start_workflows(text, jsonb[], text, text[]),
  ratchet.get_workflow(text), ratchet.get_steps(text), ratchet.wait_result(text, interval),
  ratchet.send(text, jsonb, text, text), ratchet.get_event(text, text),
  ratchet.cron_next(text, timestamptz, text), ratchet.cron_prev(text, timestamptz, text),
  ratchet.cron_parse(text)
  to ratchet_worker, ratchet_client;

-- the worker protocol
grant execute on function
  ratchet.claim(text[], text, int, interval),
  ratchet.claim_workflow(text, text, interval),
  ratchet.heartbeat(text, interval, text[]),
  ratchet.record_step(text, bigint, int, text, jsonb, jsonb),
  ratchet.finish(text, bigint, jsonb),
  ratchet.fail(text, bigint, jsonb, interval),
  ratchet.suspend(text, bigint, timestamptz, text, text),
  ratchet.durable_sleep(text, bigint, int, double precision),
  ratchet.recv(text, bigint, int, text),
  ratchet.set_event(text, bigint, int, text, jsonb),
  ratchet.tick()
  to ratchet_worker;

-- retention batches: workers run them on a timer, operators by hand
grant execute on function ratchet.maintain(int) to ratchet_worker, ratchet_client;

-- management
grant execute on function
  ratchet.cancel(text), ratchet.resume(text), ratchet.fork(text, int, text),
  ratchet.create_queue(text, int, int, int, interval),
  ratchet.pause_queue(text), ratchet.resume_queue(text),
  ratchet.schedule(text, text, text, jsonb, text, text), ratchet.unschedule(text),
  ratchet.list_schedules(), ratchet.purge(interval, int, text, text),
  ratchet.set_retention(text, text, interval)
  to ratchet_client;

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
       coalesce(e.due, 0)      as enqueued_due,
       coalesce(e.waiting, 0)  as enqueued_waiting,
       coalesce(r.running, 0)  as running,
       coalesce(r.expired, 0)  as running_lease_expired,
       e.oldest_due_at,
       ratchet.now() - e.oldest_due_at as oldest_due_age
  from ratchet.queues q
  -- one lateral per partial index: a filter "status in ('enqueued',
  -- 'running')" matches neither index predicate, and with a million ended
  -- workflows the planner scanned the whole table once per queue
  left join lateral (
    select count(*) filter (where w.start_at <= ratchet.now()) as due,
           count(*) filter (where w.start_at > ratchet.now())  as waiting,
           min(w.start_at) filter (where w.start_at <= ratchet.now()) as oldest_due_at
      from ratchet.workflows w
     where w.queue = q.name and w.status = 'enqueued'
  ) e on true
  left join lateral (
    select count(*) as running,
           count(*) filter (where w.lease_expires_at < ratchet.now()) as expired
      from ratchet.workflows w
     where w.queue = q.name and w.status = 'running'
  ) r on true;

comment on view ratchet.queue_stats is
  'Per queue: limits, due and waiting (sleeping/delayed) enqueued workflows, running ones, '
  'expired leases, and the age of the oldest due workflow.';

-- Roles. ratchet_worker runs workflows; ratchet_client starts, reads and
-- manages them. Tables are readable by both (every operator question is a
-- query) but written only through the functions, which are SECURITY DEFINER.
--
-- The roles are optional: a database owner on managed Postgres is often
-- neither superuser nor CREATEROLE. The install creates them when it may,
-- otherwise it says (NOTICE) how to create them; ratchet._grant_roles() grants
-- to the roles that exist, at install and again by hand once they exist.
-- (CREATE EXTENSION of a trusted extension runs as superuser: it always may.)

create function ratchet._grant_roles()
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $grants$
declare
  v_worker boolean := exists (select 1 from pg_catalog.pg_roles where rolname = 'ratchet_worker');
  v_client boolean := exists (select 1 from pg_catalog.pg_roles where rolname = 'ratchet_client');
begin
-- what both roles share
if v_worker and v_client then
grant usage on schema ratchet to ratchet_worker, ratchet_client;
grant select on all tables in schema ratchet to ratchet_worker, ratchet_client;

grant execute on function
  ratchet.version(), ratchet.now(),
  ratchet.start_workflow(text, jsonb, text, text, int, text, timestamptz, interval, int, text, jsonb, text, jsonb),
  ratchet.start_workflows(text, jsonb[], text, text[]),
  ratchet.start_workflows(jsonb),
  ratchet.get_workflow(text), ratchet.get_steps(text), ratchet.get_runs(text),
  ratchet.wait_result(text, interval), ratchet.explain(text),
  ratchet.send(text, jsonb, text, text), ratchet.get_event(text, text),
  ratchet.cron_next(text, timestamptz, text), ratchet.cron_prev(text, timestamptz, text),
  ratchet.cron_parse(text), ratchet.retry_delay(jsonb, int),
  ratchet.metrics(interval)
  to ratchet_worker, ratchet_client;
end if;

-- Pure helpers that the invoker-rights functions above call (the cron
-- evaluator, the clock's errors): they read nothing a role cannot already
-- read and write nothing.
if v_worker and v_client then
grant execute on function
  ratchet._raise(text, text, text),
  ratchet._cron_field(text, text, text, integer, integer),
  ratchet._cron_check_zone(text),
  ratchet._cron_instant(timestamp, text),
  ratchet._cron_search(text, timestamptz, text, boolean)
  to ratchet_worker, ratchet_client;
end if;

-- the worker protocol
if v_worker then
grant execute on function
  ratchet.claim(text[], text, int, interval, text[], text),
  ratchet.claim_workflow(text, text, interval, text),
  ratchet.heartbeat(text, interval, text[]),
  ratchet.record_step(text, bigint, int, text, jsonb, jsonb),
  ratchet.finish(text, bigint, jsonb),
  ratchet.fail(text, bigint, jsonb, interval, boolean, jsonb),
  ratchet.suspend(text, bigint, timestamptz, text, text),
  ratchet.durable_sleep(text, bigint, int, double precision),
  ratchet.recv(text, bigint, int, text),
  ratchet.set_event(text, bigint, int, text, jsonb),
  ratchet.tick(),
  ratchet.record_steps(text[], bigint[], int[], text[], jsonb[], jsonb[]),
  ratchet.finish_many(text[], bigint[], jsonb[]),
  ratchet.fail_many(text[], bigint[], jsonb[], interval[], boolean[], jsonb[]),
  ratchet.finish_and_claim(text[], bigint[], jsonb[], text[], text, int, interval, text[], text)
  to ratchet_worker;
end if;

-- retention batches: workers run them on a timer, operators by hand
if v_worker and v_client then
grant execute on function ratchet.maintain(int) to ratchet_worker, ratchet_client;
end if;

-- management
if v_client then
grant execute on function
  ratchet.cancel(text), ratchet.resume(text), ratchet.fork(text, int, text),
  ratchet.create_queue(text, int, int, int, interval),
  ratchet.pause_queue(text), ratchet.resume_queue(text),
  ratchet.schedule(text, text, text, jsonb, text, text), ratchet.unschedule(text),
  ratchet.list_schedules(), ratchet.purge(interval, int, text, text),
  ratchet.set_retention(text, text, interval)
  to ratchet_client;
end if;

  return case
    when v_worker and v_client then 'granted to ratchet_worker and ratchet_client'
    when v_worker then 'granted to ratchet_worker only: ratchet_client does not exist'
    when v_client then 'granted to ratchet_client only: ratchet_worker does not exist'
    else 'no grants: roles ratchet_worker and ratchet_client do not exist' end;
end;
$grants$;

comment on function ratchet._grant_roles() is
  'Internal: grant ratchet_worker and ratchet_client their share, to whichever of them exist. '
  'Run by the install; run it again (as the schema owner) after creating the roles by hand.';

revoke all on all functions in schema ratchet from public;

do $roles$
declare
  v_may boolean := exists (select 1 from pg_catalog.pg_roles
                            where rolname = current_user and (rolsuper or rolcreaterole));
  v_missing text[] := array[]::text[];
  v_role text;
begin
  foreach v_role in array array['ratchet_worker', 'ratchet_client'] loop
    if not exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
      if v_may then
        execute pg_catalog.format('create role %I nologin', v_role);
      else
        v_missing := v_missing || v_role;
      end if;
    end if;
  end loop;
  perform ratchet._grant_roles();
  if pg_catalog.cardinality(v_missing) > 0 then
    raise notice 'ratchet: role(s) % not created: % may not create roles, so nobody but the owner can use ratchet yet',
      pg_catalog.array_to_string(v_missing, ', '), current_user
      using hint = 'as a superuser or CREATEROLE role run '
        || (select pg_catalog.string_agg(pg_catalog.format('CREATE ROLE %I NOLOGIN;', m), ' ')
              from pg_catalog.unnest(v_missing) m)
        || pg_catalog.format(' then, as %I, SELECT ratchet._grant_roles(); (docs/upgrading.md, "Roles on managed Postgres")', current_user);
  end if;
end
$roles$;

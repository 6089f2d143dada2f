-- Retention: ended workflows, their steps, runs, messages and events, consumed
-- messages and stale rate-limit rows are deleted after a per-queue,
-- per-status period (ratchet.queues.keep_*; NULL keeps forever).
--
-- There is no daemon: workers call maintain() on a timer (the Python worker
-- every maintenance_interval seconds), pg_cron may call it too. Each call is
-- one short transaction that deletes at most max_rows of each kind, takes
-- rows with FOR UPDATE SKIP LOCKED (it never waits for a row a worker or an
-- operator holds, and they wait at most for one batch), and runs only if it
-- gets a transaction-level advisory lock, so concurrent maintainers skip
-- instead of colliding.

-- The one place that deletes workflows and every row that belongs to one.
-- Callers pass ids they hold FOR UPDATE. Returns the counts deleted.
create function ratchet._delete_workflows(
  p_ids text[],
  out workflows bigint, out steps bigint, out events bigint, out messages bigint)
returns record
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from ratchet.steps s where s.workflow_id = any(p_ids);
  get diagnostics steps = row_count;
  delete from ratchet.runs r where r.workflow_id = any(p_ids);
  delete from ratchet.events e where e.workflow_id = any(p_ids);
  get diagnostics events = row_count;
  delete from ratchet.messages m where m.destination_id = any(p_ids);
  get diagnostics messages = row_count;
  delete from ratchet.workflows w where w.workflow_id = any(p_ids);
  get diagnostics workflows = row_count;
end;
$$;

comment on function ratchet._delete_workflows(text[]) is
  'Internal: delete workflows with their steps, runs, events and messages (used by purge and maintain).';

-- Ended workflows of one queue and status that ended before p_before, oldest
-- first, locked (skipping rows someone else holds). A child is kept while its
-- parent exists: a parent that resumes or replays may still read its result.
create function ratchet._due_workflows(p_queue text, p_status text, p_before timestamptz,
                                       p_limit int)
returns text[]
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.array_agg(d.workflow_id)
    from (select w.workflow_id from ratchet.workflows w
           where w.queue = p_queue and w.status = p_status
             and w.ended_at is not null and w.ended_at < p_before
             and (w.parent_id is null or not exists (
                   select 1 from ratchet.workflows p where p.workflow_id = w.parent_id))
           order by w.ended_at
           limit p_limit
           for update of w skip locked) d
$$;

comment on function ratchet._due_workflows(text, text, timestamptz, int) is
  'Internal: lock and return up to p_limit ended workflows of a queue and status that '
  'ended before p_before (children of existing parents excluded).';

-- The retention period of one status from a queue row.
create function ratchet._keep(p_queue ratchet.queues, p_status text)
returns interval
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select case p_status
           when 'succeeded' then p_queue.keep_succeeded
           when 'failed'    then p_queue.keep_failed
           when 'cancelled' then p_queue.keep_cancelled
           when 'dead'      then p_queue.keep_dead
         end
$$;

comment on function ratchet._keep(ratchet.queues, text) is
  'Internal: the retention period (keep_<status>) of a queue for an end status.';

-- set_retention: how long ended workflows of a queue and status are kept.
create function ratchet.set_retention(queue text, status text, keep interval)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_queue  alias for $1;
  p_status alias for $2;
  p_keep   alias for $3;
begin
  perform ratchet._check_queue(p_queue);
  if p_status is null or p_status not in ('succeeded', 'failed', 'cancelled', 'dead', 'all') then
    perform ratchet._raise('RT005',
      pg_catalog.format('status must be succeeded, failed, cancelled, dead or all, got %L', p_status),
      'retention applies to ended workflows: e.g. set_retention(''default'', ''failed'', ''90 days'')');
  end if;
  if p_keep < interval '0' or p_keep > interval '100 years' then
    perform ratchet._raise('RT005', pg_catalog.format('keep must be between 0 and 100 years, got %s', p_keep),
      'pass an interval such as ''7 days'', or NULL to keep forever');
  end if;
  update ratchet.queues q
     set keep_succeeded = case when p_status in ('succeeded', 'all') then p_keep else q.keep_succeeded end,
         keep_failed    = case when p_status in ('failed', 'all')    then p_keep else q.keep_failed end,
         keep_cancelled = case when p_status in ('cancelled', 'all') then p_keep else q.keep_cancelled end,
         keep_dead      = case when p_status in ('dead', 'all')      then p_keep else q.keep_dead end
   where q.name = p_queue;
end;
$$;

comment on function ratchet.set_retention(text, text, interval) is
  'Keep ended workflows of a queue with this status (or all) for keep; NULL keeps them forever. '
  'RT005 for an unknown queue, a status that is not an end state, or a negative keep.';

-- maintain: one batch of retention. Deletes up to max_rows due workflows
-- (with their rows), up to max_rows consumed messages past the destination
-- queue's keep_succeeded, and stale rate-limit rows. Returns what it deleted;
-- skipped is true (and nothing is done) when another session is maintaining.
-- Call it again while workflows = max_rows to catch up.
create function ratchet.maintain(max_rows int default 500)
returns table (workflows bigint, steps bigint, events bigint, messages bigint,
               queue_claims bigint, skipped boolean)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_max_rows alias for $1;
  v_now    timestamptz := ratchet.now();
  v_queue  ratchet.queues;
  v_status text;
  v_keep   interval;
  v_ids    text[];
  v_all    text[] := '{}'::text[];
  v_del    record;
  v_count  bigint;
begin
  if p_max_rows is null or p_max_rows < 1 or p_max_rows > 100000 then
    perform ratchet._raise('RT005', pg_catalog.format('max_rows must be between 1 and 100000, got %s', p_max_rows),
      'small batches keep locks short: e.g. maintain(max_rows => 500), called again while it returns 500');
  end if;
  workflows := 0::bigint; steps := 0::bigint; events := 0::bigint; messages := 0::bigint;
  queue_claims := 0::bigint;
  -- 0x52415443 = 'RATC'; key 1 = maintain.
  if not pg_catalog.pg_try_advisory_xact_lock(1380013123, 1) then
    skipped := true;
    return next;
    return;
  end if;
  skipped := false;

  <<queues>>
  for v_queue in select * from ratchet.queues q order by q.name loop
    foreach v_status in array array['succeeded', 'cancelled', 'failed', 'dead'] loop
      v_keep := ratchet._keep(v_queue, v_status);
      continue when v_keep is null;
      v_ids := ratchet._due_workflows(v_queue.name, v_status, v_now - v_keep,
                                      p_max_rows - pg_catalog.cardinality(v_all));
      continue when v_ids is null;
      v_all := v_all || v_ids;
      exit queues when pg_catalog.cardinality(v_all) >= p_max_rows;
    end loop;
  end loop;
  if pg_catalog.cardinality(v_all) > 0 then
    v_del := ratchet._delete_workflows(v_all);
    workflows := v_del.workflows; steps := v_del.steps;
    events := v_del.events; messages := v_del.messages;
  end if;

  -- Consumed messages of workflows that live on (long-running receivers):
  -- replay reads them from their recv step, so only idempotent re-sends need
  -- them, within the destination queue's keep_succeeded.
  delete from ratchet.messages m
   where m.message_id in (
     select c.message_id from ratchet.messages c
      where c.consumed_at is not null
        and c.consumed_at < v_now - coalesce(
              (select q.keep_succeeded from ratchet.workflows w
                 join ratchet.queues q on q.name = w.queue
                where w.workflow_id = c.destination_id),
              case when not exists (select 1 from ratchet.workflows w
                                     where w.workflow_id = c.destination_id)
                   then interval '0' end)
      order by c.consumed_at
      limit p_max_rows
      for update skip locked);
  get diagnostics v_count = row_count;
  messages := messages + v_count;

  -- Rate-limit rows outside their window; claim() trims only the queues it
  -- claims from, so a queue that lost its limit or its workers keeps rows.
  delete from ratchet.queue_claims c
   where c.ctid = any(array(
     select k.ctid from ratchet.queue_claims k
       left join ratchet.queues q on q.name = k.queue
      where q.rate_period is null or k.claimed_at <= v_now - q.rate_period
      limit p_max_rows));
  get diagnostics queue_claims = row_count;
  return next;
end;
$$;

comment on function ratchet.maintain(int) is
  'One short batch of retention: delete up to max_rows ended workflows past their queue''s '
  'keep_<status> (with steps, events, messages), old consumed messages and stale rate-limit '
  'rows. skipped = true when another session holds the maintenance lock.';

-- retention: per queue and end status, the period and how many workflows are
-- due for deletion now.
create view ratchet.retention as
select q.name as queue,
       s.status,
       ratchet._keep(q, s.status) as keep,
       (select count(*) from ratchet.workflows w
         where w.queue = q.name and w.status = s.status and w.ended_at is not null
           and w.ended_at < ratchet.now() - ratchet._keep(q, s.status)
           and (w.parent_id is null or not exists (
                 select 1 from ratchet.workflows p where p.workflow_id = w.parent_id))) as due
  from ratchet.queues q
  cross join (values (1, 'succeeded'), (2, 'failed'), (3, 'cancelled'), (4, 'dead')) s(ord, status)
 order by q.name, s.ord;

comment on view ratchet.retention is
  'Retention per queue and end status: keep (NULL = forever) and how many workflows are due '
  'for deletion by maintain() (children wait for their parent).';

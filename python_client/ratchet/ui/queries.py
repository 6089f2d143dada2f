"""Every read the dashboard makes: plain SQL on Ratchet's tables.

The same queries are documented in docs/observability.md for Grafana and
psql users. They need SELECT on the ratchet tables only (no EXECUTE on any
function), so a read-only role can serve the dashboard; they read the real
clock (``now()``), not ``ratchet.now()``. Each query is written to use one of
the indexes of sql/10_tables.sql; tests/ui/test_plans.py checks the plans.
"""

from __future__ import annotations

#: Workflows per status: one scan of the table (838 ms with 1M rows), so the
#: dashboard caches it when it is slow (see ratchet.ui.app.Cache).
STATUS_COUNTS = """
select status, count(*)::bigint as n from ratchet.workflows group by status
"""

#: Per queue: limits, pause, live counts (partial indexes only) and the age of
#: the oldest due workflow.
QUEUES = """
select q.name as queue, q.paused, q.concurrency, q.worker_concurrency,
       q.rate_limit, q.rate_period, q.created_at,
       coalesce(e.due, 0) as due, coalesce(e.waiting, 0) as waiting,
       coalesce(r.running, 0) as running, coalesce(r.expired, 0) as expired,
       e.oldest_due_at, now() - e.oldest_due_at as oldest_due_age
  from ratchet.queues q
  -- one lateral per partial index: "status in (enqueued, running)" matches
  -- neither index predicate and would scan the whole table per queue
  left join lateral (
    select count(*) filter (where w.start_at <= now()) as due,
           count(*) filter (where w.start_at > now()) as waiting,
           min(w.start_at) filter (where w.start_at <= now()) as oldest_due_at
      from ratchet.workflows w
     where w.queue = q.name and w.status = 'enqueued'
  ) e on true
  left join lateral (
    select count(*) as running,
           count(*) filter (where w.lease_expires_at < now()) as expired
      from ratchet.workflows w
     where w.queue = q.name and w.status = 'running'
  ) r on true
 order by q.name
"""

#: Workflows that ended per bucket over a recent window (ended_at index).
#: %(window)s and %(bucket)s are intervals.
THROUGHPUT = """
select date_bin(%(bucket)s::interval, w.ended_at, now() - %(window)s::interval) as bucket,
       count(*) filter (where w.status = 'succeeded') as succeeded,
       count(*) filter (where w.status in ('failed', 'dead')) as failed,
       count(*) filter (where w.status = 'cancelled') as cancelled
  from ratchet.workflows w
 where w.ended_at is not null and w.ended_at > now() - %(window)s::interval
 group by 1 order by 1
"""

#: Live workers: whoever holds a lease now (Ratchet has no worker registry;
#: an idle worker is invisible). The lease end is the last heartbeat plus
#: the lease length.
WORKERS = """
select w.worker_id, count(*) as running, array_agg(distinct w.queue) as queues,
       max(w.lease_expires_at) as lease_until,
       bool_and(w.lease_expires_at < now()) as expired
  from ratchet.workflows w
 where w.status = 'running'
 group by w.worker_id order by w.worker_id
"""

#: The workers view another module may add (detected with to_regclass).
WORKERS_VIEW = "select * from ratchet.workers"

#: A change counter for live updates: live counts from the partial indexes,
#: the newest start and end, and the tables' write counters.
CHANGES = """
select (select count(*) from ratchet.workflows where status = 'enqueued') as enqueued,
       (select count(*) from ratchet.workflows where status = 'running') as running,
       (select max(created_at) from ratchet.workflows) as last_created,
       (select max(ended_at) from ratchet.workflows where ended_at is not null) as last_ended,
       (select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)
          from pg_stat_user_tables where schemaname = 'ratchet') as writes
"""

#: The list page: filters, newest first, keyset pagination on
#: (created_at, workflow_id) via workflows_created_idx. Built by
#: :func:`list_query`.
LIST_COLUMNS = """w.workflow_id, w.name, w.queue, w.status, w.attempts, w.created_at,
       w.start_at, w.ended_at, w.worker_id, w.wait_for, w.wait_key, w.parent_id,
       w.error->>'type' as error_type, w.error->>'message' as error_message"""

WORKFLOW = "select * from ratchet.workflows where workflow_id = %s"

STEPS = """
select step_id, name, output, error, run_id, recorded_at
  from ratchet.steps where workflow_id = %s order by step_id
"""

RUNS_TABLE = "select to_regclass('ratchet.runs') is not null as present"
RUNS = "select * from ratchet.runs where workflow_id = %s order by run_id"

CHILDREN = """
select workflow_id, name, status, created_at, ended_at
  from ratchet.workflows where parent_id = %s order by created_at, workflow_id limit 200
"""

MESSAGES = """
select message_id, topic, message, idempotency_key, created_at, consumed_at, consumed_step
  from ratchet.messages where destination_id = %s order by message_id limit 200
"""

EVENTS = "select key, value, updated_at from ratchet.events where workflow_id = %s order by key"

EXPLAIN = "select ratchet.explain(%s) as explain"

SCHEDULES = """
select name, cron, timezone, workflow_name, queue, input, next_fire_at, last_fired_at,
       last_workflow_id, created_at
  from ratchet.schedules order by next_fire_at, name
"""


def list_query(filters: dict[str, object], limit: int,
               after: tuple[object, str] | None) -> tuple[str, dict[str, object]]:
    """The list page query for validated filters; every value is a parameter."""
    where: list[str] = []
    params: dict[str, object] = {"limit": limit + 1}
    if filters.get("status"):
        where.append("w.status = any(%(status)s)")
        params["status"] = filters["status"]
    if filters.get("name"):
        where.append("w.name = %(name)s")
        params["name"] = filters["name"]
    if filters.get("queue"):
        where.append("w.queue = %(queue)s")
        params["queue"] = filters["queue"]
    if filters.get("since"):
        where.append("w.created_at >= %(since)s")
        params["since"] = filters["since"]
    if filters.get("until"):
        where.append("w.created_at < %(until)s")
        params["until"] = filters["until"]
    if filters.get("q"):
        # id prefix: a range of the primary key, rechecked by starts_with
        where.append("w.workflow_id >= %(q)s and w.workflow_id < %(q_end)s "
                     "and starts_with(w.workflow_id, %(q)s)")
        params["q"] = filters["q"]
        params["q_end"] = str(filters["q"]) + "\U0010ffff"
    if after is not None:
        # the first condition is the index bound, the second breaks ties
        where.append("w.created_at <= %(after_ts)s")
        where.append("(w.created_at, w.workflow_id) < (%(after_ts)s, %(after_id)s)")
        params["after_ts"], params["after_id"] = after
    sql = (f"select {LIST_COLUMNS}\n  from ratchet.workflows w\n"
           + (" where " + "\n   and ".join(where) + "\n" if where else "")
           + " order by w.created_at desc, w.workflow_id desc\n limit %(limit)s")
    return sql, params

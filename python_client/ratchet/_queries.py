"""Every SQL statement the client sends, in one place.

Each statement is a static string calling one function (or view) of the
extension with named arguments and explicit casts, so plans and prepared
statements are reused. The modules that run them (``_app``, ``_steps``,
``_waits``, ``_outcome``, ``_runs``, ``_context``, ``_worker``, ``cli`` through
:class:`ratchet.App`...) import them from here and never build SQL of their
own. The installer (``_install``) and the
demo keep their own bootstrap statements; the web UI has its documented
``ratchet.ui.queries``.
"""

from __future__ import annotations

# -- starting and reading ---------------------------------------------------

_START_ARGS = """
  name => %(name)s::text, input => %(input)s::jsonb,
  workflow_id => %(workflow_id)s::text, queue => %(queue)s::text,
  priority => %(priority)s::int, dedup_key => %(dedup_key)s::text,
  start_at => coalesce(%(start_at)s::timestamptz,
                       ratchet.now() + %(delay)s::float8 * interval '1 second'),
  timeout => %(timeout)s::float8 * interval '1 second',
  max_attempts => %(max_attempts)s::int, parent_id => %(parent_id)s::text,
  retry_policy => %(retry_policy)s::jsonb, app_version => %(app_version)s::text,
  trace_context => %(trace_context)s::jsonb"""

START = f"select ratchet.start_workflow({_START_ARGS}) as workflow_id"
#: many workflows, each with its own options, in one call and one commit
START_MANY = "select ratchet.start_workflows(items => %s::jsonb) as workflow_ids"

# A child workflow and the parent's checkpoint of it, atomically, in one round
# trip: the CTE runs first (the outer select reads its result); if the parent's
# run is stale, record_step raises and the child's insert rolls back with it.
START_CHILD = f"""
with c as (select ratchet.start_workflow({_START_ARGS}) as id)
select c.id as workflow_id,
       ratchet.record_step(workflow_id => %(parent_id)s::text,
                           run_id => %(run_id)s::bigint,
                           step_id => %(step_id)s::int,
                           name => %(step_name)s::text,
                           output => pg_catalog.jsonb_build_object('child_id', c.id))
  from c"""

GET_WORKFLOW = "select * from ratchet.get_workflow(workflow_id => %s::text)"
GET_STEPS = "select * from ratchet.get_steps(workflow_id => %s::text)"
STATUS = "select status, output, error from ratchet.get_workflow(workflow_id => %s::text)"

# -- running ------------------------------------------------------------------

# input and steps come back as JSON text, decoded per workflow by
# _runs.context_from_claim: a row that cannot be decoded (nested too deep
# for Python's decoder, written by an old version) then fails alone instead
# of taking the whole claimed batch down inside fetchall().
_CLAIMED_COLUMNS = "workflow_id, name, input::text as input, run_id, attempt, steps::text as steps"
CLAIM = f"""select {_CLAIMED_COLUMNS} from ratchet.claim(
  queues => %(queues)s::text[], worker_id => %(worker_id)s::text,
  max_count => %(max_count)s::int, lease => %(lease)s::float8 * interval '1 second',
  names => %(names)s::text[], app_version => %(app_version)s::text)"""
CLAIM_WORKFLOW = f"""select {_CLAIMED_COLUMNS} from ratchet.claim_workflow(
  workflow_id => %(workflow_id)s::text, worker_id => %(worker_id)s::text,
  lease => %(lease)s::float8 * interval '1 second', app_version => %(app_version)s::text)"""
HEARTBEAT = ("select ratchet.heartbeat(worker_id => %s::text, "
             "lease => %s::float8 * interval '1 second', workflow_ids => %s::text[]) as renewed")
TICK = "select ratchet.tick() as started"

MAINTAIN = "select * from ratchet.maintain(max_rows => %s::int)"

RECORD_STEP = """select ratchet.record_step(
  workflow_id => %s::text, run_id => %s::bigint, step_id => %s::int,
  name => %s::text, output => %s::jsonb, error => %s::jsonb)"""
#: many checkpoints (of any runs) in one call; an outcome per item
RECORD_STEPS = """select ord, outcome from ratchet.record_steps(
  workflow_ids => %s::text[], run_ids => %s::bigint[], step_ids => %s::int[],
  names => %s::text[], outputs => %s::jsonb[], errors => %s::jsonb[])"""
FINISH = ("select ratchet.finish(workflow_id => %s::text, run_id => %s::bigint, "
          "output => %s::jsonb)")
# The database decides retry or not, and when, from the workflow's stored retry
# policy (or the worker's, retry_policy, for a workflow started by name).
FAIL = """select ratchet.fail(workflow_id => %s::text, run_id => %s::bigint,
  error => %s::jsonb, retryable => %s::boolean, retry_policy => %s::jsonb) as status"""
# A workflow this worker cannot run: retried after retry_in whatever its policy.
FAIL_RETRY_IN = """select ratchet.fail(workflow_id => %s::text, run_id => %s::bigint,
  error => %s::jsonb, retry_in => %s::float8 * interval '1 second') as status"""
# An in-process step retry: the delay before the next attempt, NULL for none.
RETRY_DELAY = """select extract(epoch from ratchet.retry_delay(policy => %s::jsonb,
  attempt => %s::int))::float8 as delay"""
# until NULL means "now" (give the workflow back at once, costing no attempt).
SUSPEND = """select ratchet.suspend(workflow_id => %s::text, run_id => %s::bigint,
  until => coalesce(%s::timestamptz, ratchet.now()),
  wait_for => %s::text, wait_key => %s::text)"""
DURABLE_SLEEP = """select wake_at, remaining_seconds from ratchet.durable_sleep(
  workflow_id => %s::text, run_id => %s::bigint, step_id => %s::int,
  seconds => %s::float8)"""

# A child's outcome and, when the wait has a deadline, the seconds left.
CHILD_STATUS = """select w.status, w.output, w.error,
  case when %s::timestamptz is null then null
       else extract(epoch from (%s::timestamptz - ratchet.now()))::float8
  end as remaining
  from ratchet.get_workflow(workflow_id => %s::text) as w"""

# -- communication ------------------------------------------------------------

SEND = """select ratchet.send(destination_id => %s::text, message => %s::jsonb,
  topic => %s::text, idempotency_key => %s::text) as message_id"""
# A send from inside a workflow is a step: the message and its checkpoint
# commit together, and the idempotency key defaults to workflow_id:step_id.
SEND_STEP = """
with s as (select ratchet.send(destination_id => %(destination_id)s::text,
                               message => %(message)s::jsonb, topic => %(topic)s::text,
                               idempotency_key => %(idempotency_key)s::text) as id)
select s.id as message_id,
       ratchet.record_step(workflow_id => %(workflow_id)s::text,
                           run_id => %(run_id)s::bigint, step_id => %(step_id)s::int,
                           name => 'send',
                           output => pg_catalog.jsonb_build_object('message_id', s.id))
  from s"""
# "missing" tells SQL NULL (no message) from a message whose body is JSON null.
RECV = """select r.m as message, r.m is null as missing,
  extract(epoch from (%s::timestamptz - ratchet.now()))::float8 as remaining
  from ratchet.recv(workflow_id => %s::text, run_id => %s::bigint, step_id => %s::int,
                    topic => %s::text) as r(m)"""
SET_EVENT = """select ratchet.set_event(workflow_id => %s::text, run_id => %s::bigint,
  step_id => %s::int, key => %s::text, value => %s::jsonb)"""
GET_EVENT = ("select e.v as value, e.v is null as missing "
             "from ratchet.get_event(workflow_id => %s::text, key => %s::text) as e(v)")

# -- managing -----------------------------------------------------------------

CANCEL = "select ratchet.cancel(workflow_id => %s::text) as cancelled"
RESUME = "select ratchet.resume(workflow_id => %s::text)"
FORK = ("select ratchet.fork(workflow_id => %s::text, from_step => %s::int, "
        "new_workflow_id => %s::text) as workflow_id")


# -- queues and schedules -------------------------------------------------------

CREATE_QUEUE = """select ratchet.create_queue(name => %s::text, concurrency => %s::int,
  worker_concurrency => %s::int, rate_limit => %s::int,
  rate_period => %s::float8 * interval '1 second')"""
PAUSE_QUEUE = "select ratchet.pause_queue(name => %s::text)"
RESUME_QUEUE = "select ratchet.resume_queue(name => %s::text)"
SCHEDULE = """select ratchet.schedule(name => %s::text, cron => %s::text,
  workflow_name => %s::text, input => %s::jsonb, queue => %s::text,
  timezone => %s::text)"""
UNSCHEDULE = "select ratchet.unschedule(name => %s::text) as removed"

# -- retention ----------------------------------------------------------------

PURGE = """select ratchet.purge(older_than => %s::float8 * interval '1 second',
  max_rows => %s::int, queue => %s::text, status => %s::text) as n"""
SET_RETENTION = """select ratchet.set_retention(queue => %s::text, status => %s::text,
  keep => %s::float8 * interval '1 second')"""
COUNT_PURGEABLE = """select count(*) as n from ratchet.workflows w
 where w.ended_at < ratchet.now() - %s::float8 * interval '1 second'
   and (%s::text is null or w.queue = %s::text)
   and (%s::text is null or w.status = %s::text)"""
RETENTION = """select queue, status, keep, due from ratchet.retention
 where %s::text is null or queue = %s::text order by queue, status"""

# -- the database's clock (fake clock aware) -----------------------------------

NOW = "select ratchet.now() as t"

# -- reading records (ratchet._records) ----------------------------------------


LIST_WORKFLOWS = """select w.* from ratchet.workflows w
 where (%(status)s::text[] is null or w.status = any(%(status)s::text[]))
   and (%(name)s::text[] is null or w.name = any(%(name)s::text[]))
   and (%(queue)s::text[] is null or w.queue = any(%(queue)s::text[]))
   and (%(parent_id)s::text is null or w.parent_id = %(parent_id)s::text)
   and (%(created_after)s::timestamptz is null or w.created_at >= %(created_after)s::timestamptz)
   and (%(created_before)s::timestamptz is null or w.created_at < %(created_before)s::timestamptz)
 order by w.created_at desc, w.workflow_id
 limit %(limit)s::bigint offset %(offset)s::bigint"""

# The workflow, its queue's pause flag, its last recorded step and the time.
_STATUS_DETAIL = """select w.*, q.paused as queue_paused, ratchet.now() as db_now,
       s.name as last_step_name, s.step_id as last_step_id, s.output as last_step_output
  from {source}
  left join ratchet.queues q on q.name = w.queue
  left join lateral (select st.name, st.step_id, st.output from ratchet.steps st
                      where st.workflow_id = w.workflow_id
                      order by st.step_id desc limit 1) s on true"""
STATUS_DETAIL = _STATUS_DETAIL.format(
    source="ratchet.get_workflow(workflow_id => %s::text) w")
STATUS_MANY = _STATUS_DETAIL.format(source="ratchet.workflows w") + \
    "\n where w.workflow_id = any(%s::text[])"

QUEUES = "select * from ratchet.queue_stats order by queue"
SCHEDULES = "select * from ratchet.schedules order by name"
WORKERS = """select worker_id, running, queues, last_heartbeat, lease_expires_at, expired,
       oldest_claimed_at
  from ratchet.workers order by worker_id"""

# Batched finishes with the next claim in one call and one commit (_batch.py).
FINISH_AND_CLAIM = """select ord, workflow_id, outcome,
  name, input::text as input, run_id, attempt, steps::text as steps
  from ratchet.finish_and_claim(
  workflow_ids => %(workflow_ids)s::text[], run_ids => %(run_ids)s::bigint[],
  outputs => %(outputs)s::jsonb[],
  queues => %(queues)s::text[], worker_id => %(worker_id)s::text,
  max_count => %(max_count)s::int, lease => %(lease)s::float8 * interval '1 second',
  names => %(names)s::text[], app_version => %(app_version)s::text)"""

# Metrics per queue over a window (ratchet.metrics).
METRICS = "select * from ratchet.metrics(%s::float8 * interval '1 second')"

#: The trace context stored at start (read by a worker only when tracing is on).
TRACE_CONTEXT = "select trace_context from ratchet.workflows where workflow_id = %s"

-- Ratchet: durable workflow execution inside PostgreSQL.
--
-- The model in one screen
-- -----------------------
-- A *workflow* is a named function with JSON input, one row in
-- ratchet.workflows. A *step* is a unit of work inside it, numbered 0, 1, 2...
-- in call order; its JSON result (or error) is one row in ratchet.steps, whose
-- primary key (workflow_id, step_id) is what detects duplicate work.
--
--   start_workflow ──> enqueued ──claim──> running ──finish──> succeeded
--                        ^   ^               │  │ └──fail──> failed
--                        │   └─suspend/retry─┘  │            dead (out of attempts)
--                        └──lease expired, reclaimed by claim (new run_id)
--   cancel: enqueued|running ──> cancelled      resume: failed|cancelled|dead ──> enqueued
--
-- Every claim gives the workflow a new run_id and a lease. Every write a worker
-- makes names its run_id and is checked, under a lock on the workflow row, in
-- the same statement batch: a write from a run that is no longer current fails
-- with RT002 (or RT006 if the workflow was cancelled). Fencing plus the steps
-- primary key is what keeps exactly-once when two workers both believe they
-- own a workflow.
--
-- There is no background process: expired leases, passed deadlines and due
-- schedules are handled by whoever calls claim(), heartbeat() and tick().
--
-- Conventions: every function pins search_path = pg_catalog, pg_temp and
-- qualifies every name; argument names follow the published contract (callers
-- use named notation), and each body aliases them as p_* so that column names
-- stay unambiguous. On the hot path (start_workflow, claim, record_step,
-- finish) arguments are validated by inline conditions and the _check_*
-- helpers are called only to raise the precise error: every nested call of a
-- function with a SET clause costs a GUC save/restore and a search_path
-- recomputation, which dominated a step checkpoint before (docs/benchmarks.md).
-- The same functions run with plan_cache_mode = force_generic_plan: their
-- statements are index lookups whose plan does not depend on the values,
-- and custom plans were re-planned on every call. Errors use SQLSTATE class RT:
--   RT001 duplicate dedup key       RT004 unknown workflow
--   RT002 stale run / lost lease    RT005 invalid argument
--   RT003 duplicate step            RT006 workflow cancelled
--   RT008 install/upgrade script does not apply (sql/build.sh guards)

-- ratchet.version(): which version of the SQL is installed.
create function ratchet.version()
returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$ select '@VERSION@'::text $$;

comment on function ratchet.version() is
  'The installed Ratchet version (same for CREATE EXTENSION and the plain-SQL install).';

-- ratchet.now(): the only clock the functions read. Tests set the session
-- setting ratchet.fake_now to move time without sleeping. PL/pgSQL, not SQL:
-- a SQL function with a SET clause is never inlined, and its body is parsed
-- and planned again in every transaction that calls it (bench/run.py, section 6).
create function ratchet.now()
returns timestamptz
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return coalesce(
    nullif(pg_catalog.current_setting('ratchet.fake_now', true), '')::timestamptz,
    pg_catalog.clock_timestamp());
end;
$$;

comment on function ratchet.now() is
  'Current time for Ratchet: clock_timestamp(), unless the session sets ratchet.fake_now (tests).';

-- Raise an RT error; a function so that checks read as one line.
create function ratchet._raise(p_errcode text, p_message text, p_hint text default null)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception using errcode = p_errcode, message = p_message,
                        hint = coalesce(p_hint, '');
end;
$$;

comment on function ratchet._raise(text, text, text) is
  'Internal: raise an error with a Ratchet SQLSTATE, message and hint.';

-- Validate a name-like argument (workflow name, id, queue, key): not NULL,
-- not empty, bounded. p_what names the argument in the message.
create function ratchet._check_name(p_value text, p_what text, p_max_length int default 200)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is null or pg_catalog.btrim(p_value) = '' then
    perform ratchet._raise('RT005', pg_catalog.format('%s must not be NULL or empty', p_what),
                           pg_catalog.format('pass a non-empty %s', p_what));
  end if;
  if pg_catalog.length(p_value) > p_max_length then
    perform ratchet._raise('RT005',
      pg_catalog.format('%s is %s characters long; the limit is %s',
                        p_what, pg_catalog.length(p_value), p_max_length),
      pg_catalog.format('use a shorter %s', p_what));
  end if;
end;
$$;

comment on function ratchet._check_name(text, text, int) is
  'Internal: RT005 unless the value is a non-empty string within the length limit.';

-- Payloads (inputs, outputs, errors, messages, events) are JSONB, capped at
-- 1 MiB each: a workflow table is a queue, not a blob store.
create function ratchet._check_payload(p_value jsonb, p_what text)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is not null and pg_catalog.pg_column_size(p_value) > 1048576 then
    perform ratchet._raise('RT005',
      pg_catalog.format('%s is %s bytes; the limit is 1048576 bytes (1 MiB)',
                        p_what, pg_catalog.pg_column_size(p_value)),
      'store large data elsewhere (a table or object store) and pass a reference');
  end if;
end;
$$;

comment on function ratchet._check_payload(jsonb, text) is
  'Internal: RT005 if a JSON payload is larger than 1 MiB.';

-- NOTIFY is a latency hint only. Postgres folds identical notifications within
-- a transaction, so a bulk start sends one; a session can switch them off
-- (SET ratchet.notify = off) and rely on workers polling.
create function ratchet._notify(p_channel text, p_payload text default '')
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(pg_catalog.current_setting('ratchet.notify', true), '') <> 'off' then
    perform pg_catalog.pg_notify(p_channel, p_payload);
  end if;
end;
$$;

comment on function ratchet._notify(text, text) is
  'Internal: pg_notify unless the session set ratchet.notify = off.';

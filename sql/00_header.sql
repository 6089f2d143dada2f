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
--   RT007 trusted setting not enabled (ratchet.fake_now without the fake clock)
--   RT008 install/upgrade script does not apply (sql/build.sh guards)
--   RT009 other trust refusals
-- Trust (docs/security.md): the only session settings read are
-- ratchet.fake_now (honoured only where an administrator enabled the fake
-- clock in ratchet.settings) and ratchet.notify (a latency hint); names are
-- bounded in bytes, JSON payloads in size and nesting depth.

-- ratchet.version(): which version of the SQL is installed.
create function ratchet.version()
returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$ select '@VERSION@'::text $$;

comment on function ratchet.version() is
  'The installed Ratchet version (same for CREATE EXTENSION and the plain-SQL install).';

-- ratchet.now(): the only clock the functions read. Tests move time without
-- sleeping by setting the session setting ratchet.fake_now, which is honoured
-- only where the extension owner or a superuser enabled the fake clock
-- (update ratchet.settings set fake_clock_enabled = true); anywhere else a
-- session that sets it gets RT007 from every function, so no worker or
-- client can bend time for leases, deadlines or FIFO order. The value is a
-- fixed timestamp, or 'skip': the real clock plus ratchet.settings.clock_offset,
-- which a test advances (ratchet.testing.SkippingClock) to skip over sleeps,
-- timeouts and schedules while time keeps flowing. The table is
-- read only when the setting is non-empty: the real clock costs nothing
-- more. PL/pgSQL, not SQL: a SQL function with a SET clause is never
-- inlined, and its body is parsed and planned again in every transaction
-- that calls it (bench/run.py, section 6).
create function ratchet.now()
returns timestamptz
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_fake text := pg_catalog.current_setting('ratchet.fake_now', true);
  v_now  timestamptz;
begin
  if v_fake is null or v_fake = '' then
    return pg_catalog.clock_timestamp();
  end if;
  if not coalesce((select s.fake_clock_enabled from ratchet.settings s), false) then
    perform ratchet._raise('RT007',
      'ratchet.fake_now is set but the fake clock is not enabled in this database',
      'RESET ratchet.fake_now; only the extension owner or a superuser can enable it '
      '(update ratchet.settings set fake_clock_enabled = true), for test databases');
  end if;
  if v_fake = 'skip' then  -- a skipping clock: real time plus what a test skipped
    return pg_catalog.clock_timestamp() + (select s.clock_offset from ratchet.settings s);
  end if;
  begin
    v_now := v_fake::timestamptz;
  exception when others then
    perform ratchet._raise('RT005',
      pg_catalog.format('ratchet.fake_now is not a timestamp: %L', v_fake),
      'set it to a finite timestamptz such as ''2030-01-01 00:00Z'', or RESET it');
  end;
  if not pg_catalog.isfinite(v_now)
     or v_now not between '1970-01-01 00:00Z'::timestamptz and '9000-01-01 00:00Z'::timestamptz then
    perform ratchet._raise('RT005',
      pg_catalog.format('ratchet.fake_now must be a finite time between 1970 and 9000, got %s', v_fake),
      'set it to a finite timestamptz such as ''2030-01-01 00:00Z'', or RESET it');
  end if;
  return v_now;
end;
$$;

comment on function ratchet.now() is
  'Current time for Ratchet: clock_timestamp(), or the session''s ratchet.fake_now where the '
  'owner enabled the fake clock (ratchet.settings): a fixed timestamp, or ''skip'' for the '
  'real clock plus ratchet.settings.clock_offset; RT007 if it is set but not enabled.';

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
-- not empty, at most p_max_length BYTES (the unit PostgreSQL counts for
-- index entries and channel names; a non-ASCII character takes 2-4 bytes).
-- p_what names the argument in the message.
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
  if pg_catalog.octet_length(p_value) > p_max_length then
    perform ratchet._raise('RT005',
      pg_catalog.format('%s is %s bytes long; the limit is %s bytes',
                        p_what, pg_catalog.octet_length(p_value), p_max_length),
      pg_catalog.format('use a shorter %s (limits count bytes: a non-ASCII character takes 2 to 4)',
                        p_what));
  end if;
end;
$$;

comment on function ratchet._check_name(text, text, int) is
  'Internal: RT005 unless the value is a non-empty string within the limit in bytes.';

-- Payloads (inputs, outputs, errors, messages, events) are JSONB, capped at
-- 1 MiB each (a workflow table is a queue, not a blob store) and at 100
-- levels of nesting: deeper documents are accepted by PostgreSQL but crash
-- or stall the JSON decoders of clients (Python raises RecursionError), so
-- one poison input would take its claimed batch down with it. The depth
-- test is one jsonpath probe in C (about 1 us for a typical payload); the
-- hot-path functions inline the same two conditions.
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
  if pg_catalog.jsonb_path_exists(p_value, 'strict $.**{101}') then
    perform ratchet._raise('RT005',
      pg_catalog.format('%s is nested more than 100 levels deep', p_what),
      'flatten the JSON (at most 100 nested arrays/objects); deep documents break client decoders');
  end if;
end;
$$;

comment on function ratchet._check_payload(jsonb, text) is
  'Internal: RT005 if a JSON payload is larger than 1 MiB or nested more than 100 levels.';

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

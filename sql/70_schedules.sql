-- Cron schedules, evaluated in SQL (the parser is in 65_cron.sql).
--
-- tick() starts every due firing exactly once, however many workers call it
-- at once: the firing time is part of the workflow id
-- ('schedule:<name>:<firing time, UTC ISO 8601>'), and start_workflow is
-- idempotent on the id. Schedules are locked with SKIP LOCKED so concurrent
-- ticks split the work instead of queueing on it.
--
-- Missed firings (no tick ran for a while, e.g. all workers were down): tick()
-- starts only the latest missed firing, not a burst of them, then moves on to
-- the next future one.

create function ratchet._firing_id(p_schedule text, p_fire_at timestamptz)
returns text
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
  select 'schedule:' || p_schedule || ':'
         || pg_catalog.to_char(p_fire_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
$$;

comment on function ratchet._firing_id(text, timestamptz) is
  'Internal: the workflow id of one firing of a schedule.';

-- schedule: create or replace a schedule. The first firing is the next cron
-- time after now.
create function ratchet.schedule(
  name          text,
  cron          text,
  workflow_name text,
  input         jsonb default '{}',
  queue         text default 'default',
  timezone      text default 'UTC')
returns timestamptz
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_name          alias for $1;
  p_cron          alias for $2;
  p_workflow_name alias for $3;
  p_input         alias for $4;
  p_queue         alias for $5;
  p_timezone      alias for $6;
  v_now  timestamptz := ratchet.now();
  v_next timestamptz;
begin
  perform ratchet._check_name(p_name, 'schedule name', 100);
  perform ratchet._check_name(p_workflow_name, 'workflow name');
  perform ratchet._check_queue(p_queue);
  if p_input is null then
    perform ratchet._raise('RT005', 'input must not be NULL', 'pass ''{}'' for no input');
  end if;
  perform ratchet._check_payload(p_input, 'input');
  v_next := ratchet.cron_next(p_cron, v_now, coalesce(p_timezone, 'UTC'));

  insert into ratchet.schedules as s
    (name, cron, timezone, workflow_name, input, queue, next_fire_at, created_at)
  values (p_name, p_cron, coalesce(p_timezone, 'UTC'), p_workflow_name, p_input, p_queue, v_next, v_now)
  on conflict (name) do update
    set cron = excluded.cron, timezone = excluded.timezone,
        workflow_name = excluded.workflow_name, input = excluded.input,
        queue = excluded.queue, next_fire_at = excluded.next_fire_at,
        last_error = null, last_error_at = null;
  return v_next;
end;
$$;

comment on function ratchet.schedule(text, text, text, jsonb, text, text) is
  'Create or replace a cron schedule (5-field cron in the given time zone) that starts '
  'workflow_name on queue. Returns the first firing time. RT005 for a bad cron or zone.';

create function ratchet.unschedule(name text)
returns boolean
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_name alias for $1;
begin
  delete from ratchet.schedules s where s.name = p_name;
  return found;
end;
$$;

comment on function ratchet.unschedule(text) is
  'Delete a schedule; false if there was none. Workflows it started are untouched.';

create function ratchet.list_schedules()
returns setof ratchet.schedules
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$ select * from ratchet.schedules s order by s.name $$;

comment on function ratchet.list_schedules() is
  'All schedules with their next firing time.';

-- tick: start the due firings. Returns how many workflows it started.
--
-- Each schedule is handled in its own subtransaction: a schedule that fails
-- (its zone vanished from the server's tzdata, its queue is unusable, ...)
-- gets the error in last_error/last_error_at, a WARNING, and its next try
-- one minute later; the others keep firing. A good firing clears last_error.
create function ratchet.tick()
returns int
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now     timestamptz := ratchet.now();
  v_sched   ratchet.schedules;
  v_fire_at timestamptz;
  v_id      text;
  v_count   int := 0;
  v_state   text;
  v_message text;
begin
  for v_sched in
    select * from ratchet.schedules s
     where s.next_fire_at <= v_now
     order by s.next_fire_at
     limit 100
     for update skip locked
  loop
    begin
      -- the latest firing that is due (not every missed one)
      v_fire_at := greatest(v_sched.next_fire_at,
                            ratchet.cron_prev(v_sched.cron, v_now, v_sched.timezone));
      v_id := ratchet._firing_id(v_sched.name, v_fire_at);
      if not exists (select 1 from ratchet.workflows w where w.workflow_id = v_id) then
        perform ratchet.start_workflow(v_sched.workflow_name,
          input => v_sched.input, workflow_id => v_id, queue => v_sched.queue);
        v_count := v_count + 1;
      end if;
      update ratchet.schedules s
         set last_fired_at = v_fire_at, last_workflow_id = v_id,
             next_fire_at = ratchet.cron_next(v_sched.cron, v_now, v_sched.timezone),
             last_error = null, last_error_at = null
       where s.name = v_sched.name;
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
      update ratchet.schedules s
         set last_error = pg_catalog.jsonb_build_object(
               'type', 'ScheduleError', 'sqlstate', v_state, 'message', v_message),
             last_error_at = v_now,
             next_fire_at = v_now + interval '1 minute'
       where s.name = v_sched.name;
      raise warning 'ratchet.tick: schedule "%" failed (%: %); the others fire, it is retried in a minute',
        v_sched.name, v_state, v_message
        using hint = 'see ratchet.schedules.last_error; fix or replace it with ratchet.schedule()';
    end;
  end loop;
  return v_count;
end;
$$;

comment on function ratchet.tick() is
  'Start each due schedule firing exactly once (workflow id schedule:<name>:<time>). After '
  'downtime only the latest missed firing starts. A failing schedule is isolated: its '
  'error goes to last_error (and a WARNING) and the others fire. Safe to call from many '
  'workers or pg_cron.';

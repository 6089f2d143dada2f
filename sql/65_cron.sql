-- Cron schedules: a standard 5-field cron parser and evaluator in PL/pgSQL.
--
-- ratchet.cron_parse() validates an expression ("minute hour day-of-month
-- month day-of-week", or a macro such as @daily) and expands each field to
-- the sorted set of values it allows, returned as jsonb.
--
-- ratchet.cron_next() and ratchet.cron_prev() evaluate an expression in the
-- wall-clock time of a time zone. They never step minute by minute: they walk
-- local calendar days (a month outside the month set is skipped in one step),
-- and on a day that matches they walk only the allowed hours and minutes, so
-- one call costs at most a few hundred cheap iterations even for rare
-- schedules (29 February). An expression that can never fire (30 February)
-- is refused up front. A local wall time becomes an instant by subtracting
-- the zone's UTC offset; on days with no offset change near them that is
-- plain arithmetic, and only days next to a transition take the careful path
-- (ratchet._cron_instant).
--
-- Syntax: each field is a comma list of `*`, `n`, `a-b`, `*/n`, `a-b/n` and
-- `a/n` (a to the end of the field, every n); month names JAN-DEC and day
-- names SUN-SAT (any case) stand for numbers, day-of-week 7 is Sunday (0).
-- `*` and `a/n` in day-of-week run to 6 (Saturday). A step must be 1 to the
-- size of its field.
--
-- Day rule (Vixie cron): when both day-of-month and day-of-week are
-- restricted (neither is written `*`), a day matches if EITHER matches;
-- otherwise both must match. `*/1` counts as `*`; `*/2` and `1-31` count as
-- restricted.
--
-- Daylight saving time:
--   * a wall time that does not exist (the spring-forward gap) never fires;
--     the schedule moves on to the next matching wall time that exists
--     (`30 2 * * *` skips the changeover day, `*/15 * * * *` goes from 01:45
--     straight to 03:00);
--   * a wall time that occurs twice (the fall-back overlap) fires once, at
--     its first occurrence (`30 1 * * *` fires at 01:30 daylight time only;
--     `*/15 * * * *` does not repeat 01:00-01:45 in standard time).
-- Firing instants therefore increase strictly with wall time, which is what
-- lets cron_next/cron_prev return the first candidate they meet.
--
-- Time zones must be names listed in pg_timezone_names (not POSIX strings
-- such as 'EST5EDT4' or bare offsets).
--
-- Every invalid expression, time zone or (NULL or infinite) time raises
-- SQLSTATE RT005.

-- Expand one field of a cron expression to its sorted set of values.
create function ratchet._cron_field(
  p_expr text, p_text text, p_field text, p_min integer, p_max integer
) returns integer[]
language plpgsql
immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  -- Names accepted in the month and day-of-week fields, in value order.
  v_names text[] := case p_field
    when 'month' then array['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN',
                            'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC']
    when 'day-of-week' then array['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI',
                                  'SAT']
  end;
  -- `*` and `a/n` run up to here; day-of-week accepts 7 (Sunday) only when
  -- written explicitly.
  v_top integer := case when p_field = 'day-of-week' then 6 else p_max end;
  v_hint text := pg_catalog.format(
    '%s accepts %s-%s%s; each comma-separated item is *, n, a-b, */n, a-b/n '
    'or a/n (a to the end, every n)',
    p_field, p_min, p_max,
    case p_field
      when 'month' then ' or JAN-DEC'
      when 'day-of-week' then ' (0 and 7 are Sunday) or SUN-SAT'
      else ''
    end);
  v_item text;
  v_parts text[];
  v_tok text;
  v_bounds integer[];
  v_pos integer;
  v_lo integer;
  v_hi integer;
  v_step integer;
  v_seen boolean[] := array[]::boolean[];
  v_values integer[] := array[]::integer[];
begin
  foreach v_item in array pg_catalog.string_to_array(p_text, ',') loop
    -- a, a-b, with an optional /n; a may be *. (A plain match and
    -- split_part: a regular expression with capture groups costs ten times
    -- more, and this runs on every evaluation of a schedule.)
    if v_item !~ '^[^/-]+(?:-[^/-]+)?(?:/[^/-]+)?$'
       or v_item ~ '^[*]-' then
      perform ratchet._raise('RT005',
        pg_catalog.format(
          'invalid cron expression %L: %s item %L is malformed',
          p_expr, p_field, v_item),
        v_hint);
    end if;

    v_parts := array[
      pg_catalog.split_part(pg_catalog.split_part(v_item, '/', 1), '-', 1),
      nullif(pg_catalog.split_part(pg_catalog.split_part(v_item, '/', 1), '-', 2), ''),
      nullif(pg_catalog.split_part(v_item, '/', 2), '')];

    -- The endpoints: numbers, or names in the month and day-of-week fields.
    v_bounds := array[null, null]::integer[];
    for v_i in 1 .. 2 loop
      v_tok := v_parts[v_i];
      continue when v_tok is null or v_tok = '*';
      v_pos := pg_catalog.array_position(v_names, pg_catalog.upper(v_tok));
      if v_pos is not null then
        v_bounds[v_i] := v_pos - 1 + p_min;
      elsif v_tok ~ '^[0-9]+$' then
        -- Long digit strings are out of range (and would overflow integer).
        v_bounds[v_i] := case when pg_catalog.length(v_tok) <= 9
                              then v_tok::integer end;
        if v_bounds[v_i] is null or v_bounds[v_i] < p_min
           or v_bounds[v_i] > p_max then
          perform ratchet._raise('RT005',
            pg_catalog.format(
              'invalid cron expression %L: %s value %L is out of range %s-%s',
              p_expr, p_field, v_tok, p_min, p_max),
            v_hint);
        end if;
      else
        perform ratchet._raise('RT005',
          pg_catalog.format(
            'invalid cron expression %L: %s value %L is not a number%s',
            p_expr, p_field, v_tok,
            case when v_names is not null then ' or a name' else '' end),
          v_hint);
      end if;
    end loop;

    v_step := 1;
    if v_parts[3] is not null then
      v_step := case when v_parts[3] ~ '^[0-9]{1,9}$'
                     then v_parts[3]::integer else 0 end;
      if v_step not between 1 and v_top - p_min + 1 then
        perform ratchet._raise('RT005',
          pg_catalog.format(
            'invalid cron expression %L: %s step %L must be a number from 1 to %s',
            p_expr, p_field, v_parts[3], v_top - p_min + 1),
          v_hint);
      end if;
    end if;

    if v_parts[1] = '*' then
      v_lo := p_min;
      v_hi := v_top;
    elsif v_bounds[2] is not null then
      v_lo := v_bounds[1];
      v_hi := v_bounds[2];
      if v_lo > v_hi then
        perform ratchet._raise('RT005',
          pg_catalog.format(
            'invalid cron expression %L: %s range %L is reversed',
            p_expr, p_field, v_item),
          v_hint);
      end if;
    elsif v_parts[3] is not null then
      v_lo := v_bounds[1];
      v_hi := greatest(v_lo, v_top);
    else
      v_lo := v_bounds[1];
      v_hi := v_lo;
    end if;

    -- Mark the values (day-of-week 7 is Sunday, 0); plain PL/pgSQL loops,
    -- no SQL queries, as this runs for every evaluation of a schedule.
    for v_value in v_lo .. v_hi by v_step loop
      v_seen[case when v_value = 7 and p_field = 'day-of-week' then 0
                  else v_value end] := true;
    end loop;
  end loop;

  -- Sorted, without duplicates.
  for v_value in p_min .. v_top loop
    if v_seen[v_value] then
      v_values := v_values || v_value;
    end if;
  end loop;
  return v_values;
end;
$$;

comment on function ratchet._cron_field(text, text, text, integer, integer) is
  'Internal: expand one cron field (p_text) to its sorted values; p_expr is '
  'the whole expression, for error messages. Raises RT005.';


create function ratchet.cron_parse(expr text)
returns jsonb
language plpgsql
immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  p_expr alias for $1;
  v_hint constant text :=
    'a cron expression is five fields "minute hour day-of-month month '
    'day-of-week" separated by spaces, e.g. "*/15 9-17 * * MON-FRI", or one '
    'of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly';
  v_text text := pg_catalog.regexp_replace(
    p_expr, '^[[:space:]]+|[[:space:]]+$', '', 'g');
  v_fields text[];
begin
  if pg_catalog.octet_length(p_expr) > 1000 then
    perform ratchet._raise('RT005',
      pg_catalog.format('invalid cron expression: it is %s bytes long; the limit is 1000',
                        pg_catalog.octet_length(p_expr)),
      v_hint);
  end if;
  if v_text is null or v_text = '' then
    perform ratchet._raise('RT005',
      'invalid cron expression: it is NULL or empty',
      v_hint);
  end if;

  if pg_catalog.left(v_text, 1) = '@' then
    v_text := case pg_catalog.lower(v_text)
      when '@yearly' then '0 0 1 1 *'
      when '@annually' then '0 0 1 1 *'
      when '@monthly' then '0 0 1 * *'
      when '@weekly' then '0 0 * * 0'
      when '@daily' then '0 0 * * *'
      when '@midnight' then '0 0 * * *'
      when '@hourly' then '0 * * * *'
    end;
    if v_text is null then
      perform ratchet._raise('RT005',
        pg_catalog.format(
          'invalid cron expression %L: unknown macro', p_expr),
        v_hint);
    end if;
  end if;

  v_fields := pg_catalog.regexp_split_to_array(v_text, '[[:space:]]+');
  if pg_catalog.cardinality(v_fields) <> 5 then
    perform ratchet._raise('RT005',
      pg_catalog.format(
        'invalid cron expression %L: it has %s fields, expected 5',
        p_expr, pg_catalog.cardinality(v_fields)),
      v_hint);
  end if;

  return pg_catalog.jsonb_build_object(
    'minute', pg_catalog.to_jsonb(
      ratchet._cron_field(p_expr, v_fields[1], 'minute', 0, 59)),
    'hour', pg_catalog.to_jsonb(
      ratchet._cron_field(p_expr, v_fields[2], 'hour', 0, 23)),
    'dom', pg_catalog.to_jsonb(
      ratchet._cron_field(p_expr, v_fields[3], 'day-of-month', 1, 31)),
    'month', pg_catalog.to_jsonb(
      ratchet._cron_field(p_expr, v_fields[4], 'month', 1, 12)),
    'dow', pg_catalog.to_jsonb(
      ratchet._cron_field(p_expr, v_fields[5], 'day-of-week', 0, 7)),
    'dom_star', v_fields[3] ~ '^[*](/0*1)?$',
    'dow_star', v_fields[5] ~ '^[*](/0*1)?$');
end;
$$;

comment on function ratchet.cron_parse(text) is
  'Validate a 5-field cron expression (or @yearly/@annually/@monthly/@weekly/'
  '@daily/@midnight/@hourly) and expand it to {"minute","hour","dom","month",'
  '"dow": sorted int arrays, "dom_star","dow_star": whether the day fields '
  'are unrestricted}. Day-of-week 7 is normalised to 0 (Sunday). Raises RT005 '
  'on any invalid expression.';


-- Time zones are checked against ratchet.time_zones, the names of
-- pg_timezone_names copied at install (reading the view itself scans the
-- whole zone directory: tens of milliseconds); a name missing there is
-- looked up in the view. No session setting takes part: what a schedule
-- stores was validated with nothing a client can change (docs/security.md).
create function ratchet._cron_check_zone(p_timezone text)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_timezone = 'UTC' then
    return;
  end if;
  if p_timezone is null or p_timezone = '' or pg_catalog.octet_length(p_timezone) > 100
     or (not exists (select 1 from ratchet.time_zones z where z.name = pg_catalog.lower(p_timezone))
         and not exists (
           select 1 from pg_catalog.pg_timezone_names as z
            where pg_catalog.lower(z.name) = pg_catalog.lower(p_timezone))) then
    perform ratchet._raise('RT005',
      pg_catalog.format('invalid cron time zone %L', p_timezone),
      'use a time zone name from pg_timezone_names, e.g. ''UTC'' or ''America/New_York''');
  end if;
end;
$$;

comment on function ratchet._cron_check_zone(text) is
  'Internal: raise RT005 unless p_timezone is a pg_timezone_names name (case-insensitively).';


-- The first instant whose wall-clock time in p_timezone is p_local, or NULL
-- when p_local falls in a gap. Used only on days near an offset change.
create function ratchet._cron_instant(p_local timestamp, p_timezone text)
returns timestamptz
language plpgsql
immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v_guess timestamptz := p_local at time zone 'UTC';
  v_at timestamptz;
  v_candidate timestamptz;
  v_best timestamptz;
begin
  -- The instants showing p_local lie within 15 hours of v_guess; the offsets
  -- in force a day either side cover both sides of a transition. PostgreSQL's
  -- own reading of p_local is a third candidate.
  foreach v_at in array array[v_guess - interval '24 hours',
                              v_guess + interval '24 hours']::timestamptz[] loop
    v_candidate := (p_local - ((v_at at time zone p_timezone)
                               - (v_at at time zone 'UTC'))) at time zone 'UTC';
    if (v_candidate at time zone p_timezone) = p_local
       and (v_best is null or v_candidate < v_best) then
      v_best := v_candidate;
    end if;
  end loop;
  v_candidate := p_local at time zone p_timezone;
  if (v_candidate at time zone p_timezone) = p_local
     and (v_best is null or v_candidate < v_best) then
    v_best := v_candidate;
  end if;
  return v_best;
end;
$$;

comment on function ratchet._cron_instant(timestamp, text) is
  'Internal: the first instant at which the wall clock in p_timezone reads '
  'p_local (the earlier one in a fall-back overlap), or NULL if that wall time '
  'is skipped by a spring-forward gap.';


-- The search behind cron_next (p_backward false: the first firing strictly
-- after p_from) and cron_prev (p_backward true: the last firing at or before
-- p_from).
create function ratchet._cron_search(
  p_expr text, p_from timestamptz, p_timezone text, p_backward boolean
) returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_spec jsonb := ratchet.cron_parse(p_expr);
  -- jsonb int arrays to integer[] without a query: '[1, 2]' -> '{1, 2}'.
  v_minutes integer[] :=
    pg_catalog.translate((v_spec -> 'minute')::text, '[]', '{}')::integer[];
  v_hours integer[] :=
    pg_catalog.translate((v_spec -> 'hour')::text, '[]', '{}')::integer[];
  v_doms integer[] :=
    pg_catalog.translate((v_spec -> 'dom')::text, '[]', '{}')::integer[];
  v_months integer[] :=
    pg_catalog.translate((v_spec -> 'month')::text, '[]', '{}')::integer[];
  v_dows integer[] :=
    pg_catalog.translate((v_spec -> 'dow')::text, '[]', '{}')::integer[];
  v_dom_star boolean := (v_spec ->> 'dom_star')::boolean;
  v_dow_star boolean := (v_spec ->> 'dow_star')::boolean;
  v_nh integer := pg_catalog.cardinality(v_hours);
  v_nm integer := pg_catalog.cardinality(v_minutes);
  v_off_before interval;
  v_off_at interval;
  v_off_after interval;
  v_bound timestamp;
  v_day date;
  v_stop date;
  v_month integer;
  v_match boolean;
  v_mid timestamptz;
  v_off interval;
  v_fast boolean;
  v_h integer;
  v_m integer;
  v_local timestamp;
  v_fire timestamptz;
begin
  perform ratchet._cron_check_zone(p_timezone);
  if p_from is null or not pg_catalog.isfinite(p_from) then
    perform ratchet._raise('RT005',
      pg_catalog.format('%s needs a finite time, not %s',
        case when p_backward then 'cron_prev' else 'cron_next' end,
        coalesce(p_from::text, 'NULL')),
      'pass a timestamptz such as now()');
  end if;

  -- Only a day-of-month restriction can be impossible (30 February): then
  -- no search could ever succeed. (v_doms[1] is the smallest day.)
  if not v_dom_star and v_dow_star then
    v_match := false;
    foreach v_month in array v_months loop
      v_match := v_match or v_doms[1] <= case
        when v_month = 2 then 29
        when v_month in (4, 6, 9, 11) then 30
        else 31 end;
    end loop;
    if not v_match then
      perform ratchet._raise('RT005',
        pg_catalog.format(
          'cron expression %L never fires: none of its months has that day',
          p_expr),
        'check the day-of-month and month fields');
    end if;
  end if;

  -- v_bound is p_from read as wall-clock time with the smallest UTC offset
  -- in force within a day of it (going forward) or the largest (backward).
  -- A wall time at or before it cannot fire after p_from; one after it cannot
  -- have fired at or before p_from. Firing instants grow with wall time, so
  -- walking wall times from v_bound, the first that passes is the answer.
  v_off_before := ((p_from - interval '24 hours') at time zone p_timezone)
                  - ((p_from - interval '24 hours') at time zone 'UTC');
  v_off_at := (p_from at time zone p_timezone) - (p_from at time zone 'UTC');
  v_off_after := ((p_from + interval '24 hours') at time zone p_timezone)
                 - ((p_from + interval '24 hours') at time zone 'UTC');
  if p_backward then
    v_bound := (p_from at time zone 'UTC')
               + greatest(v_off_before, v_off_at, v_off_after);
  else
    v_bound := (p_from at time zone 'UTC')
               + least(v_off_before, v_off_at, v_off_after);
  end if;

  -- Every possible expression fires at least once in 8 years (29 February
  -- skips 2100); 10 years only ends searches that DST gaps defeat.
  v_day := v_bound::date;
  if p_backward then
    v_stop := (v_day - interval '10 years')::date;
  else
    v_stop := (v_day + interval '10 years')::date;
  end if;

  while case when p_backward then v_day >= v_stop else v_day <= v_stop end loop
    if not (pg_catalog.date_part('month', v_day)::integer = any (v_months)) then
      -- Skip the rest of the month.
      if p_backward then
        v_day := v_day - pg_catalog.date_part('day', v_day)::integer;
      else
        v_day := ((v_day - pg_catalog.date_part('day', v_day)::integer + 1)
                  + interval '1 month')::date;
      end if;
      continue;
    end if;

    v_match := pg_catalog.date_part('day', v_day)::integer = any (v_doms);
    if v_dom_star or v_dow_star then
      v_match := v_match
        and pg_catalog.date_part('dow', v_day)::integer = any (v_dows);
    else
      v_match := v_match
        or pg_catalog.date_part('dow', v_day)::integer = any (v_dows);
    end if;

    if v_match then
      -- One UTC offset for the whole day, unless an offset change is near:
      -- then each wall time takes the careful path.
      v_mid := (v_day + interval '12 hours') at time zone 'UTC';
      v_off := (v_mid at time zone p_timezone) - (v_mid at time zone 'UTC');
      v_fast := v_off = ((v_mid - interval '36 hours') at time zone p_timezone)
                        - ((v_mid - interval '36 hours') at time zone 'UTC')
            and v_off = ((v_mid + interval '36 hours') at time zone p_timezone)
                        - ((v_mid + interval '36 hours') at time zone 'UTC');
      for v_i in 1 .. v_nh loop
        v_h := v_hours[case when p_backward then v_nh + 1 - v_i else v_i end];
        -- Skip hours wholly on the wrong side of v_bound.
        if p_backward then
          continue when v_day + pg_catalog.make_time(v_h, 0, 0) > v_bound;
        else
          continue when v_day + pg_catalog.make_time(v_h, 59, 0) <= v_bound;
        end if;
        for v_j in 1 .. v_nm loop
          v_m := v_minutes[case when p_backward then v_nm + 1 - v_j else v_j end];
          v_local := v_day + pg_catalog.make_time(v_h, v_m, 0);
          if p_backward then
            continue when v_local > v_bound;
          else
            continue when v_local <= v_bound;
          end if;
          if v_fast then
            v_fire := (v_local - v_off) at time zone 'UTC';
          else
            v_fire := ratchet._cron_instant(v_local, p_timezone);  -- NULL: gap
          end if;
          if (p_backward and v_fire <= p_from)
             or (not p_backward and v_fire > p_from) then
            return v_fire;
          end if;
        end loop;
      end loop;
    end if;

    if p_backward then
      v_day := v_day - 1;
    else
      v_day := v_day + 1;
    end if;
  end loop;

  perform ratchet._raise('RT005',
    pg_catalog.format(
      'cron expression %L does not fire in time zone %L within 10 years %s %s',
      p_expr, p_timezone, case when p_backward then 'before' else 'after' end,
      p_from),
    'check the day-of-month and month fields');
  return null;  -- not reached: _raise raised
end;
$$;

comment on function ratchet._cron_search(text, timestamptz, text, boolean) is
  'Internal: the search behind ratchet.cron_next (p_backward false) and '
  'ratchet.cron_prev (p_backward true).';


create function ratchet.cron_next(
  expr text, after timestamptz, timezone text default 'UTC'
) returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  p_expr     alias for $1;
  p_after    alias for $2;
  p_timezone alias for $3;
begin
  return ratchet._cron_search(p_expr, p_after, p_timezone, false);
end;
$$;

comment on function ratchet.cron_next(text, timestamptz, text) is
  'The first firing time of cron expression expr strictly after after, '
  'evaluated in the wall-clock time of timezone (a pg_timezone_names name). '
  'Wall times skipped by a DST gap never fire; wall times repeated by a DST '
  'overlap fire once, at the first occurrence. Raises RT005 for an invalid '
  'expression, zone or time, or an expression that never fires.';


create function ratchet.cron_prev(
  expr text, at timestamptz, timezone text default 'UTC'
) returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  p_expr     alias for $1;
  p_at       alias for $2;
  p_timezone alias for $3;
begin
  return ratchet._cron_search(p_expr, p_at, p_timezone, true);
end;
$$;

comment on function ratchet.cron_prev(text, timestamptz, text) is
  'The latest firing time of cron expression expr at or before at, '
  'evaluated in the wall-clock time of timezone (a pg_timezone_names name), '
  'with the same DST rules as ratchet.cron_next. Used to find the most recent '
  'missed firing after downtime. Raises RT005 for an invalid expression, zone '
  'or time, or an expression that never fires.';

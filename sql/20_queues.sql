-- Queues: creation, limits, pause/resume, and the wake-up channel.
--
-- Workers LISTEN on "ratchet.queue.<name>" (a quoted identifier) and are
-- notified when a workflow on that queue becomes claimable now. Queue names
-- are capped at 48 characters so the channel fits in NAMEDATALEN.

create function ratchet._wake_queue(p_queue text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  perform ratchet._notify('ratchet.queue.' || p_queue, '');
end;
$$;

comment on function ratchet._wake_queue(text) is
  'Internal: notify the workers of a queue that work is claimable (channel "ratchet.queue.<queue>").';

-- RT005 unless the queue exists.
create function ratchet._check_queue(p_queue text)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform ratchet._check_name(p_queue, 'queue', 48);
  if not exists (select 1 from ratchet.queues q where q.name = p_queue) then
    perform ratchet._raise('RT005', pg_catalog.format('unknown queue "%s"', p_queue),
      pg_catalog.format('create it first: select ratchet.create_queue(%L)', p_queue));
  end if;
end;
$$;

comment on function ratchet._check_queue(text) is
  'Internal: RT005 unless the queue exists.';

-- create_queue: create a queue, or change the limits of an existing one.
-- NULL limits mean "no limit".
create function ratchet.create_queue(
  name               text,
  concurrency        int default null,
  worker_concurrency int default null,
  rate_limit         int default null,
  rate_period        interval default null)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_name               alias for $1;
  p_concurrency        alias for $2;
  p_worker_concurrency alias for $3;
  p_rate_limit         alias for $4;
  p_rate_period        alias for $5;
begin
  perform ratchet._check_name(p_name, 'queue name', 48);
  if p_concurrency is not null and p_concurrency < 1 then
    perform ratchet._raise('RT005', pg_catalog.format('concurrency must be at least 1, got %s', p_concurrency),
      'pass NULL for no limit');
  end if;
  if p_worker_concurrency is not null and p_worker_concurrency < 1 then
    perform ratchet._raise('RT005',
      pg_catalog.format('worker_concurrency must be at least 1, got %s', p_worker_concurrency),
      'pass NULL for no limit');
  end if;
  if (p_rate_limit is null) <> (p_rate_period is null) then
    perform ratchet._raise('RT005', 'rate_limit and rate_period go together',
      'pass both (e.g. rate_limit => 100, rate_period => ''1 minute'') or neither');
  end if;
  if p_rate_limit is not null and (p_rate_limit < 1 or p_rate_period <= interval '0'
                                   or p_rate_period > interval '100 years') then
    perform ratchet._raise('RT005', 'rate_limit must be at least 1 and rate_period between 0 and 100 years',
      'e.g. rate_limit => 100, rate_period => ''1 minute''');
  end if;

  insert into ratchet.queues as q (name, concurrency, worker_concurrency, rate_limit, rate_period)
  values (p_name, p_concurrency, p_worker_concurrency, p_rate_limit, p_rate_period)
  on conflict (name) do update
    set concurrency = excluded.concurrency,
        worker_concurrency = excluded.worker_concurrency,
        rate_limit = excluded.rate_limit,
        rate_period = excluded.rate_period;
end;
$$;

comment on function ratchet.create_queue(text, int, int, int, interval) is
  'Create a queue or set its limits: global concurrency, per-worker concurrency, '
  'rate limit (rate_limit claims per rate_period). NULL means unlimited.';

create function ratchet._set_queue_paused(p_name text, p_paused boolean)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  perform ratchet._check_queue(p_name);
  update ratchet.queues q set paused = p_paused where q.name = p_name;
end;
$$;

comment on function ratchet._set_queue_paused(text, boolean) is
  'Internal: pause_queue/resume_queue.';

create function ratchet.pause_queue(name text)
returns void
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$ select ratchet._set_queue_paused($1, true) $$;

comment on function ratchet.pause_queue(text) is
  'Stop claims from a queue. Running workflows continue; starts are still accepted.';

create function ratchet.resume_queue(name text)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform ratchet._set_queue_paused($1, false);
  perform ratchet._wake_queue($1);
end;
$$;

comment on function ratchet.resume_queue(text) is
  'Let workers claim from a paused queue again (and wake them).';

-- ---- trust: trusted settings, time zone names, schedule errors, cron parameter names ----
-- ratchet.now() honours ratchet.fake_now only where the owner enabled it.
create table ratchet.settings (
  singleton          boolean primary key default true check (singleton),
  fake_clock_enabled boolean not null default false
);
comment on table ratchet.settings is
  'Trusted settings (one row), changed only by the extension owner or a superuser: '
  'fake_clock_enabled lets sessions move ratchet.now() with SET ratchet.fake_now (tests only).';
insert into ratchet.settings default values;
grant select on ratchet.settings to ratchet_worker, ratchet_client;

-- Cron zones are validated against this copy of pg_timezone_names (the
-- session cache ratchet.cron_zones, which a client could forge, is gone).
create table ratchet.time_zones (
  name text primary key
);
comment on table ratchet.time_zones is
  'Internal: lower-case time zone names from pg_timezone_names at install (cron zone check).';
insert into ratchet.time_zones (name)
select distinct pg_catalog.lower(z.name) from pg_catalog.pg_timezone_names z;
grant select on ratchet.time_zones to ratchet_worker, ratchet_client;

-- tick() isolates a failing schedule and records why.
alter table ratchet.schedules
  add column last_error jsonb,
  add column last_error_at timestamptz;

-- cron functions: parameters renamed p_expr/p_after/p_at/p_timezone ->
-- expr/after/at/timezone like every other public function.
drop function if exists ratchet.cron_parse(text);
drop function if exists ratchet.cron_next(text, timestamptz, text);
drop function if exists ratchet.cron_prev(text, timestamptz, text);

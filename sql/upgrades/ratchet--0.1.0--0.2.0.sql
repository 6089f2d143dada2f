-- Upgrade preamble: ratchet 0.1.0 -> 0.2.0. Hand-written; sql/build.sh turns it
-- into python_client/ratchet/_sql/ratchet--0.1.0--0.2.0.sql (ALTER EXTENSION
-- ratchet UPDATE) and ratchet-plain--0.1.0--0.2.0.sql (plain-SQL installs) by
-- putting a version guard (RT008) before it and every sql/*.sql except
-- 10_tables.sql after it, with `create function|view` as `create or replace`.
--
-- What belongs here, and only here:
--   * what sql/10_tables.sql changes since 0.1.0: new tables, columns, types,
--     indexes, constraints, sequences, with the backfill of existing rows
--     (10_tables.sql stays the truth for a fresh install; write these so the
--     result is the same catalog, including comments and column order);
--   * `drop function if exists ratchet.f(<0.1.0 argument types>);` for every
--     function whose signature, argument names, defaults or return type change,
--     or that is removed (create or replace cannot change those);
--   * `drop view if exists ratchet.v;` for every view whose columns change.
-- Lines tagged `-- @extension-only` are left out of the plain-SQL upgrade.
-- The whole upgrade runs in one transaction. Rows of workflows in flight
-- (enqueued, running, sleeping, waiting) must stay claimable and their recorded
-- steps untouched: tests/sql/test_upgrade.py runs such workflows across the
-- upgrade and compares the upgraded catalog with a fresh 0.2.0 install.
--
-- One section per change, headed `-- ---- <who>: <what> ----`.

-- ---- upgrade: 0.2.0 release (no table changes) ----
-- Roles became optional (sql/90_views_grants.sql); nothing to migrate.

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

-- Cron zones are validated against this copy of pg_timezone_names (the
-- session cache ratchet.cron_zones, which a client could forge, is gone).
create table ratchet.time_zones (
  name text primary key
);
comment on table ratchet.time_zones is
  'Internal: lower-case time zone names from pg_timezone_names at install (cron zone check).';
insert into ratchet.time_zones (name)
select distinct pg_catalog.lower(z.name) from pg_catalog.pg_timezone_names z;

-- tick() isolates a failing schedule and records why.
alter table ratchet.schedules
  add column last_error jsonb,
  add column last_error_at timestamptz;

-- cron functions: parameters renamed p_expr/p_after/p_at/p_timezone ->
-- expr/after/at/timezone like every other public function.
drop function if exists ratchet.cron_parse(text);
drop function if exists ratchet.cron_next(text, timestamptz, text);
drop function if exists ratchet.cron_prev(text, timestamptz, text);

-- ---- retention: per-queue retention periods, indexes for maintain() ----
-- Queues keep ended workflows for a period per end status (NULL = forever).
-- Existing queues get the defaults, so history past them is deleted by the
-- first maintain() calls after the upgrade (docs/upgrading.md).
alter table ratchet.queues
  add column if not exists keep_succeeded interval default interval '7 days'
    check (keep_succeeded >= interval '0'),
  add column if not exists keep_failed interval default interval '30 days'
    check (keep_failed >= interval '0'),
  add column if not exists keep_cancelled interval default interval '7 days'
    check (keep_cancelled >= interval '0'),
  add column if not exists keep_dead interval default interval '30 days'
    check (keep_dead >= interval '0');
-- purge() gained queue and status filters.
drop function if exists ratchet.purge(interval, int);
-- One range scan per (queue, status) finds what is due (was: ended_at only).
drop index if exists ratchet.workflows_ended_idx;
create index workflows_ended_idx on ratchet.workflows (queue, status, ended_at)
  where ended_at is not null;
create index if not exists messages_destination_idx on ratchet.messages (destination_id);
create index if not exists messages_consumed_idx on ratchet.messages (consumed_at)
  where consumed_at is not null;

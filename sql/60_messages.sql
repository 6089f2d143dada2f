-- Messages (send/recv) and events (set_event/get_event).
--
-- recv consumes at most one message and records it as a step in the same
-- transaction, so across crashes a message is delivered to the workflow
-- exactly once: either the consume and the checkpoint both commit, or
-- neither does. A NULL topic is the default topic ('').

-- send: deliver a message to a workflow. With an idempotency_key, a retried
-- send (same destination and key) delivers once and returns the first id.
create function ratchet.send(
  destination_id  text,
  message         jsonb,
  topic           text default null,
  idempotency_key text default null)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_destination_id  alias for $1;
  p_message         alias for $2;
  p_topic           alias for $3;
  p_idempotency_key alias for $4;
  v_now   timestamptz := ratchet.now();
  v_topic text := coalesce(p_topic, '');
  v_id    bigint;
begin
  perform ratchet._check_name(p_destination_id, 'destination_id');
  if p_message is null then
    perform ratchet._raise('RT005', 'message must not be NULL', 'send JSON, e.g. ''{"ok": true}''');
  end if;
  perform ratchet._check_payload(p_message, 'message');
  if pg_catalog.octet_length(v_topic) > 200 then
    perform ratchet._check_name(v_topic, 'topic');
  end if;
  if p_idempotency_key is not null then
    perform ratchet._check_name(p_idempotency_key, 'idempotency_key');
  end if;
  -- FOR KEY SHARE: retention cannot delete the destination under this send
  -- (that would leave a message nobody deletes); workers' updates still pass.
  if not exists (select 1 from ratchet.workflows w where w.workflow_id = p_destination_id
                 for key share) then
    perform ratchet._raise('RT004', pg_catalog.format('unknown destination workflow "%s"', p_destination_id),
      'messages go to an existing workflow_id');
  end if;

  insert into ratchet.messages as m (destination_id, topic, message, idempotency_key, created_at)
  values (p_destination_id, v_topic, p_message, p_idempotency_key, v_now)
  on conflict (destination_id, idempotency_key) where idempotency_key is not null do nothing
  returning m.message_id into v_id;

  if v_id is null then
    select m.message_id into v_id from ratchet.messages m
     where m.destination_id = p_destination_id and m.idempotency_key = p_idempotency_key;
    return v_id;
  end if;

  -- Wake the destination if it suspended waiting for this topic.
  perform ratchet._wake_waiter(p_destination_id, 'message', v_topic, v_now);
  perform ratchet._notify('ratchet.message', p_destination_id);
  return v_id;
end;
$$;

comment on function ratchet.send(text, jsonb, text, text) is
  'Send a message to a workflow (RT004 if it does not exist). A repeated idempotency_key '
  'for the same destination delivers once. Wakes the workflow if it waits for the topic.';

-- recv: consume the oldest message on the topic and checkpoint it as step
-- step_id (name 'recv') in the same transaction. NULL when there is none;
-- then nothing is recorded and the caller waits (or suspends) and retries.
create function ratchet.recv(
  workflow_id text,
  run_id      bigint,
  step_id     int,
  topic       text default null)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_run_id      alias for $2;
  p_step_id     alias for $3;
  p_topic       alias for $4;
  v_now timestamptz := ratchet.now();
  v_msg ratchet.messages;
begin
  perform ratchet._check_step_args(p_step_id, 'recv');
  if pg_catalog.octet_length(p_topic) > 200 then
    perform ratchet._check_name(p_topic, 'topic');
  end if;
  perform ratchet._fence(p_workflow_id, p_run_id, false, true);
  -- a recorded step is replayed by the client, never received again (not
  -- even by its own run: a timed-out recv is recorded with no message)
  if exists (select 1 from ratchet.steps s
              where s.workflow_id = p_workflow_id and s.step_id = p_step_id) then
    perform ratchet._raise('RT003',
      pg_catalog.format('step %s of workflow "%s" is already recorded', p_step_id, p_workflow_id),
      'a recorded step is never overwritten; replay it from the claimed steps');
  end if;

  select * into v_msg from ratchet.messages m
   where m.destination_id = p_workflow_id and m.topic = coalesce(p_topic, '')
     and m.consumed_at is null
   order by m.message_id
   limit 1
   for update skip locked;
  if not found then
    return null;
  end if;

  update ratchet.messages m set consumed_at = v_now, consumed_step = p_step_id
   where m.message_id = v_msg.message_id;
  perform ratchet._insert_step(p_workflow_id, p_run_id, p_step_id, 'recv', v_msg.message, null, v_now);
  return v_msg.message;
end;
$$;

comment on function ratchet.recv(text, bigint, int, text) is
  'Consume at most one message on topic and record it as step step_id in the same '
  'transaction (exactly-once delivery). NULL if none is waiting. Fenced like record_step.';

-- set_event: publish key = value for this workflow (latest value wins) and
-- checkpoint it as step step_id (name 'set_event').
create function ratchet.set_event(
  workflow_id text,
  run_id      bigint,
  step_id     int,
  key         text,
  value       jsonb)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_run_id      alias for $2;
  p_step_id     alias for $3;
  p_key         alias for $4;
  p_value       alias for $5;
  v_now timestamptz := ratchet.now();
begin
  perform ratchet._check_step_args(p_step_id, 'set_event');
  perform ratchet._check_name(p_key, 'event key');
  perform ratchet._check_payload(p_value, 'event value');
  perform ratchet._fence(p_workflow_id, p_run_id, false, true);
  perform ratchet._insert_step(p_workflow_id, p_run_id, p_step_id, 'set_event',
    pg_catalog.jsonb_build_object('key', p_key, 'value', p_value), null, v_now);
  insert into ratchet.events as e (workflow_id, key, value, updated_at)
  values (p_workflow_id, p_key, p_value, v_now)
  on conflict (workflow_id, key) do update set value = excluded.value, updated_at = excluded.updated_at;
  perform ratchet._notify('ratchet.event', p_workflow_id);
end;
$$;

comment on function ratchet.set_event(text, bigint, int, text, jsonb) is
  'Publish an event value for this workflow (latest wins), checkpointed as a step.';

-- get_event: the current value of an event; NULL if it was never set.
create function ratchet.get_event(workflow_id text, key text)
returns jsonb
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  p_workflow_id alias for $1;
  p_key         alias for $2;
begin
  perform ratchet._check_name(p_key, 'event key');
  perform ratchet.get_workflow(p_workflow_id);
  return (select e.value from ratchet.events e
           where e.workflow_id = p_workflow_id and e.key = p_key);
end;
$$;

comment on function ratchet.get_event(text, text) is
  'Current value of a workflow''s event (NULL if never set); RT004 if the workflow is unknown.';

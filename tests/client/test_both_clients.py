"""Behaviour both clients must share, asserted once and run against
``ratchet.App`` and ``ratchet.AsyncApp`` (the workflows, written for each,
are in flows.py; ``Client`` in clients.py drives either), so every assertion
below is the same for both.

Crash behaviour (kill -9 mid-step, lease theft, SIGTERM) is parametrized the
same way in test_crash.py, and tracing across processes in test_otel.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from clients import Client
from helpers import poll

import ratchet


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, dsn: str, conn: Any) -> Iterator[Client]:
    conn.execute("create table flow_effects (id bigserial primary key, tag text not null)")
    c = Client(str(request.param), dsn)
    yield c
    c.close()


def steps_of(conn: Any, workflow_id: str) -> list[tuple[str, Any, Any]]:
    return [(r["name"], r["output"], r["error"] and r["error"]["type"]) for r in conn.execute(
        "select name, output, error from ratchet.steps where workflow_id = %s order by step_id",
        (workflow_id,)).fetchall()]


def test_a_step_is_retried_by_its_policy_and_checkpointed_once(client, conn):
    client.run_worker()
    handle = client.start("retrying", 41)
    assert client.result(handle) == 42
    assert client.seen["flaky"] == 3  # two failures, retried by the SQL-computed policy
    assert steps_of(conn, handle.workflow_id) == [("flaky", 42, None)]


def test_errors_arrive_as_the_documented_classes_and_transactions_roll_back(client, conn):
    client.run_worker()
    handle = client.start("catches")
    assert client.result(handle) == ["StepTimeout", "StepError:ValueError",
                                     "StepError:RuntimeError"]
    tags = [r["tag"] for r in conn.execute("select tag from flow_effects").fetchall()]
    assert tags == ["kept"]  # the failed transaction's insert rolled back with it
    assert [s[0] for s in steps_of(conn, handle.workflow_id)] == \
        ["slow", "broken", "insert_then_fail", "insert"]


def test_messages_are_received_once_and_events_are_readable(client, conn):
    client.run_worker()
    handle = client.start("conversation")
    assert client.wait(client.app.get_event(handle.workflow_id, "state", timeout=10)) == \
        "waiting"
    client.wait(client.app.send(handle.workflow_id, "hello", topic="greeting",
                                idempotency_key="k1"))
    client.wait(client.app.send(handle.workflow_id, "hello", topic="greeting",
                                idempotency_key="k1"))  # a retried send: delivered once
    assert client.result(handle) == "hello"
    assert client.wait(client.app.get_event(handle.workflow_id, "state")) == "got hello"
    assert conn.execute("select count(*) as n from ratchet.messages where destination_id = %s",
                        (handle.workflow_id,)).fetchone()["n"] == 1


def test_a_long_sleep_suspends_and_frees_the_worker(client, conn):
    client.run_worker(concurrency=1)
    sleeper = client.start("long_sleep", 1.5)
    poll(lambda: conn.execute(
        "select 1 from ratchet.workflows w where workflow_id = %s and status = 'enqueued' "
        "and run_id is null and exists (select 1 from ratchet.steps s where s.workflow_id = "
        "w.workflow_id and s.name = 'sleep')", (sleeper.workflow_id,)).fetchone(),
         10, "the sleeper to suspend")
    status = client.wait(client.app.workflow_status(sleeper.workflow_id))
    assert status == "enqueued" and status.waiting_for == "sleep"
    # the only slot is free while it sleeps: another workflow runs meanwhile
    quick = client.start("two_args", 1, 2)
    assert client.result(quick, 5) == 3
    assert client.seen["after sleep"] == 0
    assert client.result(sleeper) == "awake"
    assert client.seen == Counter({"before sleep": 2, "after sleep": 1})  # body replays
    assert [s[0] for s in steps_of(conn, sleeper.workflow_id)] == ["sleep"]


def test_children_started_and_called_run_once_each(client, conn):
    client.run_worker()
    handle = client.start("parent", 2)
    assert client.result(handle) == 20 + 30
    assert client.seen["kid"] == 2
    kids = conn.execute("select workflow_id, status from ratchet.workflows where parent_id = %s "
                        "order by workflow_id", (handle.workflow_id,)).fetchall()
    assert [k["status"] for k in kids] == ["succeeded", "succeeded"]


def test_a_direct_call_runs_durably_in_this_process(client, conn):
    assert client.wait(client.wf("two_args")(2, 5)) == 7
    row = conn.execute("select status, output, worker_id from ratchet.workflows "
                       "where name = 'two_args'").fetchone()
    assert row["status"] == "succeeded" and row["output"] == 7


def test_wrong_arguments_fail_at_the_start_call(client, conn):
    with pytest.raises(ratchet.WorkflowArgumentError, match="two_args"):
        client.start("two_args", 1)
    assert conn.execute("select count(*) as n from ratchet.workflows").fetchone()["n"] == 0


def test_start_options_and_idempotent_ids(client, conn):
    client.wait(client.app.create_queue("elsewhere", concurrency=2))
    first = client.start("two_args", 1, 1, workflow_id="same-id", queue="elsewhere",
                         priority=3)
    again = client.start("two_args", 9, 9, workflow_id="same-id")
    assert first.workflow_id == again.workflow_id == "same-id"
    row = conn.execute("select queue, priority, input from ratchet.workflows").fetchone()
    assert (row["queue"], row["priority"]) == ("elsewhere", 3)
    assert row["input"]["args"] == [1, 1]


def test_start_many_starts_every_item_with_its_options_in_one_call(client, conn):
    two_args = client.wf("two_args")
    handles = client.wait(client.app.start_many([
        (two_args, [1, 2]),
        (two_args.with_options(workflow_id="many-b", priority=7, delay=3600), [3], {"b": 4}),
        ("two_args", [5, 6]),
    ]))
    assert len(handles) == 3 and handles[1].workflow_id == "many-b"
    rows = {r["workflow_id"]: r for r in conn.execute(
        "select workflow_id, priority, input, start_at > now() + interval '1 hour' "
        "- interval '1 minute' as later from ratchet.workflows").fetchall()}
    assert rows["many-b"]["priority"] == 7 and rows["many-b"]["later"]
    assert rows["many-b"]["input"] == {"args": [3], "kwargs": {"b": 4}}
    # the arguments are checked before anything is sent: a bad item starts none
    with pytest.raises(ratchet.WorkflowArgumentError):
        client.wait(client.app.start_many([(two_args, [1, 2]), (two_args, [1])]))
    # and the database refuses the whole call for one bad item (an unknown queue)
    with pytest.raises(ratchet.InvalidArgument, match="item 2"):
        client.wait(client.app.start_many([
            (two_args, [1, 2]), (two_args.with_options(queue="nowhere"), [1, 2])]))
    assert conn.execute("select count(*) as n from ratchet.workflows").fetchone()["n"] == 3
    client.run_worker()
    assert [client.result(h) for h in (handles[0], handles[2])] == [3, 11]


def test_patched_records_its_marker_once(client, conn):
    client.run_worker()
    handle = client.start("versioned")
    assert client.result(handle) == "new"
    assert [s[0] for s in steps_of(conn, handle.workflow_id)] == ["patch:v2"]


def test_reading_workflows_and_steps(client, conn):
    client.run_worker()
    handle = client.start("retrying", 1, workflow_id="listed")
    client.result(handle)
    listed = client.wait(client.app.list_workflows(name="retrying"))
    assert [w.workflow_id for w in listed] == ["listed"] and listed[0].status == "succeeded"
    steps = client.wait(client.app.get_steps("listed"))
    assert [(s.name, s.output) for s in steps] == [("flaky", 2)]
    info = client.wait(handle.get())
    assert info.output == 2
    with pytest.raises(ratchet.WorkflowNotFound):
        client.wait(client.app.retrieve("no-such-workflow"))

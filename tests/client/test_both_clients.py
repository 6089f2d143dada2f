"""Behaviour both clients must share, asserted once and run against
``ratchet.App`` and ``ratchet.AsyncApp`` (the workflows, written for each,
are in flows.py). ``client.wait(x)`` returns ``x``, or, for the async
client, runs the awaitable ``x`` on the client's event loop (a thread) and
returns its result, so every assertion below is the same for both.

Crash behaviour (kill -9 mid-step, lease theft, SIGTERM) is parametrized the
same way in test_crash.py, and tracing across processes in test_otel.py.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flows import register_async, register_sync
from helpers import poll

import ratchet


class Client:
    """One app of either flavour, its workflows, and the workers it started."""

    def __init__(self, flavor: str, dsn: str) -> None:
        self.flavor = flavor
        self.seen: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[tuple[Any, Any]] = []
        if flavor == "sync":
            self.app: Any = ratchet.App(dsn, poll_interval=0.1, suspend_threshold=0.3)
            register_sync(self.app, self.seen)
        else:
            self.loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self._thread.start()
            self.app = ratchet.AsyncApp(dsn, poll_interval=0.1, suspend_threshold=0.3)
            register_async(self.app, self.seen)

    def wait(self, value: Any, timeout: float = 30.0) -> Any:
        if not inspect.isawaitable(value):
            return value
        assert self.loop is not None, "a sync client returned an awaitable"

        async def awaited() -> Any:
            return await value

        return asyncio.run_coroutine_threadsafe(awaited(), self.loop).result(timeout)

    def wf(self, name: str) -> Any:
        return self.app.workflows[name]

    def start(self, name: str, *args: Any, **options: Any) -> Any:
        """A handle to workflow ``name`` started with ``args``."""
        wf = self.wf(name)
        return self.wait(self.app.start(wf.with_options(**options) if options else wf, *args))

    def result(self, handle: Any, timeout: float = 20.0) -> Any:
        return self.wait(handle.result(timeout=timeout), timeout + 5)

    def run_worker(self, **kw: Any) -> Any:
        kw.setdefault("install_signal_handlers", False)
        kw.setdefault("concurrency", 4)
        kw.setdefault("poll_interval", 0.1)
        kw.setdefault("grace_period", 1.0)
        worker = self.app.worker(**kw)
        if self.loop is None:
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            assert worker.wait_started(10)
            self._workers.append((worker, thread))
        else:
            task = asyncio.run_coroutine_threadsafe(worker.run(), self.loop)
            self.wait(worker.wait_started(), 10)
            self._workers.append((worker, task))
        return worker

    def close(self) -> None:
        for worker, runner in self._workers:
            if self.loop is None:
                worker.stop()
                runner.join(15)
            else:
                self.loop.call_soon_threadsafe(worker.stop)
                runner.result(15)
        self.wait(self.app.close())
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


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

"""The workflow API: list_workflows, get_steps, typed records, and status() that
says why a workflow waits."""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

import pytest

import ratchet


def test_list_workflows_filters_and_pages(app, conn):
    @app.workflow()
    def alpha(n: int) -> int:
        return n

    @app.workflow(queue="other")
    def beta() -> None: ...

    app.create_queue("other")
    for i in range(5):
        app.start(alpha, i, workflow_id=f"a-{i}")
    app.start(beta, workflow_id="b-0")
    conn.execute("update ratchet.workflows set created_at = created_at - interval '1 hour' "
                 "where workflow_id in ('a-0', 'a-1')")
    assert alpha(7) == 7

    every = app.list_workflows()
    assert all(isinstance(w, ratchet.WorkflowInfo) for w in every)
    assert len(every) == 7
    assert [w.created_at for w in every] == sorted((w.created_at for w in every), reverse=True)
    assert {w.workflow_id for w in app.list_workflows(name="beta")} == {"b-0"}
    assert {w.workflow_id for w in app.list_workflows(queue=["other"])} == {"b-0"}
    done = app.list_workflows(status="succeeded")
    assert len(done) == 1 and done[0].output == 7 and done[0].ended
    assert len(app.list_workflows(status=["enqueued", "succeeded"])) == 7
    db_now = conn.execute("select ratchet.now() as t").fetchone()["t"]
    old = app.list_workflows(created_before=db_now - timedelta(minutes=30))
    assert {w.workflow_id for w in old} == {"a-0", "a-1"}
    assert len(app.list_workflows(created_after=db_now - timedelta(minutes=30))) == 5
    page1 = app.list_workflows(limit=4)
    page2 = app.list_workflows(limit=4, offset=4)
    assert len(page1) == 4 and len(page2) == 3
    assert not {w.workflow_id for w in page1} & {w.workflow_id for w in page2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        page1[0].status = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        app.list_workflows(limit=-1)
    info = app.get_workflow("a-3")
    assert info.input == {"args": [3], "kwargs": {}} and info.status == "enqueued"
    with pytest.raises(ratchet.WorkflowNotFound):
        app.get_workflow("nope")


def test_get_steps_typed(app):
    @app.step()
    def one() -> int:
        return 1

    @app.step()
    def bad() -> None:
        raise ValueError("no")

    @app.workflow()
    def flow() -> None:
        one()
        try:
            bad()
        except ratchet.StepError:
            pass

    flow()
    wid = app.list_workflows()[0].workflow_id
    steps = app.get_steps(wid)
    assert [(s.step_id, s.name, s.output) for s in steps] == [(0, "one", 1), (1, "bad", None)]
    assert all(isinstance(s, ratchet.StepInfo) for s in steps)
    assert steps[1].error["type"] == "ValueError" and steps[1].run_id is not None
    with pytest.raises(ratchet.WorkflowNotFound):
        app.get_steps("nope")


def test_status_says_why_it_waits(app, run_worker, wait_until):
    app.suspend_threshold = 0.2
    gate = threading.Event()
    entered = threading.Event()

    @app.step()
    def first() -> int:
        return 1

    @app.step()
    def blocked() -> None:
        entered.set()
        gate.wait(20)

    @app.workflow()
    def runs() -> None:
        first()
        blocked()

    @app.workflow()
    def sleeper() -> None:
        ratchet.sleep(3600)

    @app.workflow()
    def receiver() -> None:
        ratchet.recv(topic="orders", timeout=3600)

    @app.workflow(queue="held")
    def child() -> None: ...

    @app.workflow()
    def parent() -> None:
        app.start(child, workflow_id="the-child").result()

    @app.workflow()
    def simple() -> None: ...

    app.create_queue("held")
    app.pause_queue("held")
    delayed = app.start(simple, delay=3600)
    due = app.start(simple)
    st = due.status()
    assert st == "enqueued" and st.waiting_for == "worker" and "claim" in st.reason
    st = delayed.status()
    assert st.waiting_for == "start_at" and st.wake_at is not None
    assert "delayed start" in st.reason
    held = app.start(child, workflow_id="held-child")
    assert held.status().waiting_for == "paused_queue"
    assert "'held' is paused" in held.status().reason

    handles = {"runs": app.start(runs), "sleeper": app.start(sleeper),
               "receiver": app.start(receiver), "parent": app.start(parent)}
    run_worker(queues=["default"])
    assert entered.wait(10)

    def waiting(h: ratchet.WorkflowHandle, what: str) -> ratchet.WorkflowStatus | None:
        st = h.status()
        return st if st.waiting_for == what else None

    st = wait_until(lambda: waiting(handles["sleeper"], "sleep"), 10, "sleeper")
    assert st.status == "enqueued" and "sleeping until" in st.reason and st.wake_at
    st = wait_until(lambda: waiting(handles["receiver"], "message"), 10, "receiver")
    assert st.wait_key == "orders" and "topic 'orders'" in st.reason
    st = wait_until(lambda: waiting(handles["parent"], "child"), 10, "parent")
    assert st.wait_key == "the-child" and "the-child" in st.reason
    st = handles["runs"].status()
    assert st == "running" and st.running_step == 1 and st.worker_id
    assert st.lease_expires_at is not None and "step #1" in st.reason
    workers = app.list_workers()
    assert [w.worker_id for w in workers] == [st.worker_id]
    assert workers[0].running >= 1 and workers[0].queues == ["default"]
    assert not workers[0].expired
    gate.set()
    wait_until(lambda: handles["runs"].status() == "succeeded", 10, "runs to finish")
    assert handles["runs"].status().waiting_for is None
    assert str(handles["runs"].status()) == "succeeded"
    assert handles["runs"].get().status == "succeeded"


def test_queue_and_schedule_records(app):
    @app.workflow()
    def nightly() -> None: ...

    app.create_queue("limited", concurrency=3, rate_limit=10, rate_period=60)
    app.schedule("every-night", "0 3 * * *", nightly)
    queues = {q.queue: q for q in app.list_queues()}
    assert queues["limited"].concurrency == 3
    assert queues["limited"].rate_period == timedelta(seconds=60)
    assert queues["default"].paused is False
    (sched,) = app.list_schedules()
    assert isinstance(sched, ratchet.ScheduleInfo)
    assert (sched.name, sched.cron, sched.workflow_name) == ("every-night", "0 3 * * *",
                                                             "nightly")
    assert app.unschedule("every-night") and app.list_schedules() == []

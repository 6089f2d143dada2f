"""Durable sleep, messages and events."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from psycopg.conninfo import make_conninfo

import ratchet


def test_short_sleep_happens_in_process(app, run_worker):
    @app.workflow()
    def flow() -> float:
        t0 = time.monotonic()
        ratchet.sleep(0.3)
        return time.monotonic() - t0

    h = app.start(flow)
    run_worker()
    assert h.result(timeout=10) >= 0.25
    (step,) = h.steps()
    assert step["name"] == "sleep" and "wake_at" in step["output"]
    assert h.info()["attempts"] == 1


def test_sleep_outside_workflows_is_time_sleep():
    t0 = time.monotonic()
    ratchet.sleep(0.05)
    assert time.monotonic() - t0 >= 0.05


def _sleepy_app(dsn: str, **kw: float) -> ratchet.App:
    app = ratchet.App(dsn, poll_interval=0.1, **kw)

    @app.step()
    def before() -> str:
        return "before"

    @app.step()
    def after() -> str:
        return "after"

    @app.workflow()
    def flow() -> list[str]:
        a = before()
        ratchet.sleep(3600)
        return [a, after()]

    return app


def test_long_sleep_suspends_and_resumes_after_the_wake_time(dsn, conn, run_worker,
                                                              wait_until):
    app = _sleepy_app(dsn, suspend_threshold=0.5)
    # A worker two hours later (its sessions see ratchet.now() moved).
    later = (datetime.now().astimezone() + timedelta(hours=2)).isoformat()
    future = _sleepy_app(make_conninfo(dsn, options=f"-c ratchet.fake_now={later}"))
    try:
        h = app.start("flow")
        first = run_worker(app)
        wf = wait_until(lambda: conn.execute(
            "select status, start_at, run_id from ratchet.workflows "
            "where status = 'enqueued' and start_at > now() + interval '50 minutes'"
        ).fetchone(), what="the workflow to suspend")
        assert wf["run_id"] is None
        assert first.running_count == 0  # no worker slot held while sleeping
        first.stop()
        assert first.wait_stopped(10)

        run_worker(future)
        assert h.result(timeout=10) == ["before", "after"]
        steps = h.steps()
        assert [s["name"] for s in steps] == ["before", "sleep", "after"]
        assert steps[0]["run_id"] == steps[1]["run_id"] != steps[2]["run_id"]
    finally:
        app.close()
        future.close()


def test_recv_gets_messages_in_order_exactly_once(app, run_worker, wait_until):
    @app.workflow()
    def flow() -> list[object]:
        return [ratchet.recv("orders", timeout=10), ratchet.recv("orders", timeout=10)]

    h = app.start(flow)
    run_worker()
    app.send(h.workflow_id, {"n": 1}, topic="orders")
    app.send(h.workflow_id, {"n": 2}, topic="orders")
    app.send(h.workflow_id, "other topic", topic="misc")
    assert h.result(timeout=15) == [{"n": 1}, {"n": 2}]
    names = [s["name"] for s in h.steps()]
    assert names == ["sleep", "recv", "sleep", "recv"]


def test_recv_timeout_returns_none_and_is_recorded(app, run_worker):
    @app.workflow()
    def flow() -> object:
        return ratchet.recv(timeout=0.3)

    h = app.start(flow)
    run_worker()
    assert h.result(timeout=10) is None
    steps = h.steps()
    assert [(s["name"], s["output"]) for s in steps][1] == ("recv", None)


def test_long_recv_suspends_and_wakes_on_send(dsn, conn, run_worker, wait_until):
    app = ratchet.App(dsn, poll_interval=0.1, suspend_threshold=0.2)
    try:
        @app.workflow()
        def flow() -> object:
            return ratchet.recv(timeout=3600)

        h = app.start(flow)
        worker = run_worker(app)
        wait_until(lambda: conn.execute(
            "select 1 from ratchet.workflows where status = 'enqueued' "
            "and wait_for = 'message'").fetchone(), what="the workflow to wait for a message")
        assert worker.running_count == 0
        t0 = time.monotonic()
        app.send(h.workflow_id, {"hello": "world"})
        assert h.result(timeout=10) == {"hello": "world"}
        assert time.monotonic() - t0 < 5
    finally:
        app.close()


def test_message_with_json_null_body_is_delivered(app, run_worker):
    @app.workflow()
    def flow() -> list[object]:
        return [ratchet.recv(timeout=10), "done"]

    h = app.start(flow)
    run_worker()
    app.send(h.workflow_id, None)
    assert h.result(timeout=10) == [None, "done"]


def test_send_idempotency_key_delivers_once(app, conn):
    @app.workflow()
    def flow() -> None:
        return None

    h = app.start(flow)
    a = app.send(h.workflow_id, 1, idempotency_key="k")
    b = app.send(h.workflow_id, 1, idempotency_key="k")
    assert a == b
    assert conn.execute("select count(*) as n from ratchet.messages").fetchone()["n"] == 1


def test_send_to_unknown_workflow(app):
    import pytest

    with pytest.raises(ratchet.WorkflowNotFound):
        app.send("nobody-here", {"x": 1})


def test_send_inside_a_workflow_is_a_step(app, conn, run_worker):
    @app.workflow()
    def receiver() -> object:
        return ratchet.recv(timeout=10)

    @app.workflow()
    def sender(dest: str) -> int:
        return app.send(dest, {"from": ratchet.workflow_id()})

    r = app.start(receiver)
    s = app.start(sender, r.workflow_id, workflow_id="sender-1")
    run_worker()
    assert r.result(timeout=10) == {"from": "sender-1"}
    assert isinstance(s.result(timeout=10), int)
    (step,) = s.steps()
    assert step["name"] == "send"
    key = conn.execute("select idempotency_key from ratchet.messages").fetchone()
    assert key["idempotency_key"] == "sender-1:0"


def test_events(app, run_worker):
    @app.workflow()
    def flow() -> str:
        ratchet.set_event("progress", {"pct": 50})
        ratchet.set_event("progress", {"pct": 100})
        ratchet.recv(timeout=10)
        return "done"

    h = app.start(flow)
    assert app.get_event(h.workflow_id, "progress") is None  # not set, no wait
    run_worker()
    assert app.get_event(h.workflow_id, "progress", timeout=10) is not None
    h.send("go")
    assert h.result(timeout=10) == "done"
    assert h.get_event("progress") == {"pct": 100}
    assert [s["name"] for s in h.steps()][:2] == ["set_event", "set_event"]


def test_get_event_waits_for_the_event(app, run_worker):
    @app.workflow()
    def flow() -> None:
        ratchet.recv(timeout=10)
        ratchet.set_event("ready", True)

    h = app.start(flow)
    run_worker()
    t0 = time.monotonic()
    assert app.get_event(h.workflow_id, "ready", timeout=0.3) is None
    assert time.monotonic() - t0 >= 0.3
    h.send("go")
    assert app.get_event(h.workflow_id, "ready", timeout=10) is True


def test_get_event_inside_a_workflow_is_checkpointed(app, run_worker):
    @app.workflow()
    def publisher() -> None:
        ratchet.set_event("answer", 42)

    @app.workflow()
    def reader(other: str) -> object:
        return ratchet.get_event(other, "answer", timeout=10)

    p = app.start(publisher)
    r = app.start(reader, p.workflow_id)
    run_worker()
    assert r.result(timeout=10) == 42
    (step,) = r.steps()
    assert (step["name"], step["output"]) == ("get_event", 42)


def test_timeout_cancels_the_workflow(app, run_worker):
    import pytest

    @app.workflow(timeout=0.5)
    def flow() -> None:
        ratchet.sleep(1.5)  # in-process (below the threshold); the deadline passes

    h = app.start(flow)
    run_worker()
    with pytest.raises(ratchet.WorkflowCancelled):
        h.result(timeout=10)

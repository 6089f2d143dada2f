"""Child workflows: starting one is a checkpointed step; waiting for it is too."""

from __future__ import annotations

import time
from collections import Counter

import pytest

import ratchet


def test_child_started_with_app_start_and_awaited(app, conn, run_worker):
    @app.workflow()
    def child(x: int) -> int:
        return x * 2

    @app.workflow()
    def parent(x: int) -> dict[str, object]:
        handle = app.start(child, x)
        return {"child_id": handle.workflow_id, "result": handle.result()}

    h = app.start(parent, 21, workflow_id="p1")
    run_worker()
    assert h.result(timeout=10) == {"child_id": "p1:0", "result": 42}
    assert [s["name"] for s in h.steps()] == ["start:child", "result"]
    child_row = conn.execute("select parent_id, status from ratchet.workflows "
                             "where workflow_id = 'p1:0'").fetchone()
    assert child_row == {"parent_id": "p1", "status": "succeeded"}


def test_direct_call_of_a_child_runs_it_in_process(app, conn):
    calls = Counter()

    @app.workflow()
    def child(x: int) -> int:
        calls["child"] += 1
        return x + 1

    @app.workflow()
    def parent(x: int) -> int:
        return child(child(x))

    assert parent(1) == 3  # no worker running: everything ran here
    assert calls["child"] == 2
    rows = conn.execute("select count(*) as n from ratchet.workflows "
                        "where parent_id is not null and status = 'succeeded'").fetchone()
    assert rows["n"] == 2


def test_child_failure_is_raised_in_the_parent(app, run_worker):
    @app.workflow()
    def child() -> None:
        raise ValueError("child broke")

    @app.workflow()
    def parent() -> str:
        try:
            app.start(child).result()
        except ratchet.WorkflowFailed as exc:
            return f"{exc.type}: {exc.message}"
        return "no error"

    h = app.start(parent)
    run_worker()
    assert h.result(timeout=10) == "ValueError: child broke"


def test_replay_never_starts_a_second_child(app, conn, run_worker):
    calls = Counter()

    @app.workflow()
    def child() -> str:
        return "child done"

    @app.workflow(retries=2, retry_interval=0.01)
    def parent() -> str:
        h = app.start(child)
        calls["runs"] += 1
        if calls["runs"] == 1:
            raise RuntimeError("fail the first run after the child started")
        return h.result()

    # The first run fails after starting the child; the retry replays the
    # start. Only one child exists.
    h = app.start(parent)
    run_worker()
    assert h.result(timeout=10) == "child done"
    assert calls["runs"] == 2
    n = conn.execute("select count(*) as n from ratchet.workflows where parent_id = %s",
                     (h.workflow_id,)).fetchone()["n"]
    assert n == 1


def test_long_wait_for_a_child_suspends_the_parent(dsn, conn, run_worker):
    app = ratchet.App(dsn, poll_interval=0.1, suspend_threshold=0.2)
    try:
        @app.step()
        def slow() -> str:
            time.sleep(1.0)
            return "slow"

        @app.workflow()
        def child() -> str:
            return slow()

        @app.workflow()
        def parent() -> str:
            return app.start(child).result()

        h = app.start(parent)
        run_worker(app, concurrency=4)
        assert h.result(timeout=15) == "slow"
        steps = h.steps()
        assert [s["name"] for s in steps] == ["start:child", "result"]
        # The result was recorded by a later run: the parent suspended meanwhile.
        assert steps[0]["run_id"] != steps[1]["run_id"]
    finally:
        app.close()


def test_child_result_timeout_inside_a_workflow(app, run_worker):
    @app.workflow(queue="default")
    def never() -> None:
        return None

    @app.workflow()
    def parent() -> str:
        h = app.start(never, start_at=None, delay=3600)
        try:
            h.result(timeout=0.3)
        except TimeoutError:
            return "timed out"
        return "finished"

    h = app.start(parent)
    run_worker()
    assert h.result(timeout=10) == "timed out"
    assert [s["name"] for s in h.steps()] == ["start:never", "sleep", "result"]


def test_cancel_cascades_to_children(app, conn, wait_until, run_worker):
    @app.workflow()
    def child() -> None:
        ratchet.sleep(3600)

    @app.workflow()
    def parent() -> None:
        app.start(child).result()

    h = app.start(parent)
    run_worker()
    wait_until(lambda: conn.execute("select 1 from ratchet.workflows where parent_id = %s",
                                    (h.workflow_id,)).fetchone(), what="the child")
    assert h.cancel() >= 1
    with pytest.raises(ratchet.WorkflowCancelled):
        h.result(timeout=5)
    status = conn.execute("select status from ratchet.workflows where parent_id = %s",
                          (h.workflow_id,)).fetchone()["status"]
    assert status == "cancelled"

"""Starting workflows, start options, and handles."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import ratchet


def test_start_with_an_existing_id_returns_that_workflow(app, conn):
    @app.workflow()
    def flow(x: int) -> int:
        return x

    h1 = app.start(flow, 1, workflow_id="order-7")
    h2 = app.start(flow, 2, workflow_id="order-7")
    assert h1.workflow_id == h2.workflow_id == "order-7"
    rows = conn.execute("select input from ratchet.workflows").fetchall()
    assert rows == [{"input": {"args": [1], "kwargs": {}}}]


def test_start_options_are_stored(app, conn):
    app.create_queue("slow")

    @app.workflow(queue="slow", max_attempts=3)
    def flow() -> None:
        return None

    h = app.start(flow.with_options(priority=5, timeout=60, delay=timedelta(minutes=10)))
    wf = h.info()
    assert wf["queue"] == "slow" and wf["priority"] == 5 and wf["max_attempts"] == 3
    assert wf["status"] == "enqueued"
    row = conn.execute("select start_at - now() > interval '9 minutes' as later, "
                       "deadline - created_at as timeout from ratchet.workflows").fetchone()
    assert row["later"] and row["timeout"] == timedelta(seconds=60)

    # the keyword form (untyped, kept for compatibility) stores the same
    at = datetime(2031, 1, 1, tzinfo=timezone.utc)
    h2 = app.start(flow, start_at=at, queue="default")
    assert h2.info()["start_at"] == at and h2.info()["queue"] == "default"


def test_with_options_binds_chains_and_leaves_keywords_to_the_workflow(app, conn):
    @app.workflow()
    def flow(x: int, queue: str = "") -> str:
        return f"{x}{queue}"

    options = ratchet.StartOptions(workflow_id="opt-1", priority=3)
    bound = flow.with_options(options).with_options(dedup_key="d")
    assert bound.options == ratchet.StartOptions(workflow_id="opt-1", priority=3, dedup_key="d")
    assert flow.with_options(priority=1).with_options(options).options == options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.priority = 9  # type: ignore[misc]
    with pytest.raises(TypeError, match="delay must be a number of seconds"):
        flow.with_options(delay="soon")  # type: ignore[arg-type]
    # every keyword is the workflow's, even one named like an option
    h = app.start(bound, 1, queue="q")
    assert h.workflow_id == "opt-1"
    wf = h.info()
    assert (wf["queue"], wf["priority"], wf["dedup_key"]) == ("default", 3, "d")
    assert wf["input"] == {"args": [1], "kwargs": {"queue": "q"}}
    with pytest.raises(ratchet.WorkflowArgumentError, match="priority"):
        app.start(flow.with_options(queue="default"), 1, priority=5)  # type: ignore[call-arg]
    # calling a bound workflow runs it directly, with its options
    assert flow.with_options(workflow_id="direct-1")(2, "z") == "2z"
    assert app.retrieve("direct-1").info()["status"] == "succeeded"


def test_a_child_started_with_options(app, conn, run_worker):
    @app.workflow()
    def child(n: int) -> int:
        return n * 2

    @app.workflow()
    def parent() -> int:
        return app.start(child.with_options(workflow_id="kid", priority=7), 21).result()

    h = app.start(parent)
    run_worker()
    assert h.result(timeout=15) == 42
    kid = app.retrieve("kid").info()
    assert kid["parent_id"] == h.workflow_id and kid["priority"] == 7


def test_dedup_key_conflict(app):
    @app.workflow()
    def flow() -> None:
        return None

    app.start(flow, dedup_key="user-1")
    with pytest.raises(ratchet.DuplicateDedupKey):
        app.start(flow, dedup_key="user-1")


def test_unknown_queue_is_invalid(app):
    @app.workflow()
    def flow() -> None:
        return None

    with pytest.raises(ratchet.InvalidArgument):
        app.start(flow, queue="nope")


def test_result_timeout_and_status(app):
    @app.workflow()
    def flow() -> None:
        return None

    h = app.start(flow)
    assert h.status() == "enqueued"
    with pytest.raises(TimeoutError):
        h.result(timeout=0.3)


def test_cancel_then_result_raises_cancelled_and_resume(app, run_worker):
    @app.workflow()
    def flow() -> str:
        return "done"

    h = app.start(flow)
    assert h.cancel() == 1
    with pytest.raises(ratchet.WorkflowCancelled):
        h.result(timeout=5)
    h.resume()
    run_worker()
    assert h.result(timeout=10) == "done"


def test_retrieve(app):
    @app.workflow()
    def flow() -> int:
        return 5

    with pytest.raises(ratchet.WorkflowNotFound):
        app.retrieve("no-such-workflow")
    h = app.start(flow)
    assert app.retrieve(h.workflow_id).status() == "enqueued"


def test_start_by_name_and_sql_started_inputs(app, conn, run_worker):
    @app.workflow(name="greet")
    def greet(name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    h = app.start("greet", "ann")
    wid = conn.execute("select ratchet.start_workflow('greet', "
                       "input => '{\"name\": \"bob\", \"punctuation\": \"?\"}') as id"
                       ).fetchone()["id"]
    run_worker()
    assert h.result(timeout=10) == "hello ann!"
    assert app.retrieve(wid).result(timeout=10) == "hello bob?"


def test_unknown_workflow_name_waits_without_spending_attempts(app, conn, run_worker):
    """Issue 9.6 changed this: a worker claims only the names it registered, so a
    workflow no worker knows waits (it used to fail with UnknownWorkflow)."""
    @app.workflow()
    def known() -> str:
        return "ok"

    h = app.start("not_registered_anywhere", max_attempts=1)
    done = app.start(known)
    run_worker()
    assert done.result(timeout=10) == "ok"
    wf = conn.execute("select status, attempts from ratchet.workflows where workflow_id = %s",
                      (h.workflow_id,)).fetchone()
    assert wf == {"status": "enqueued", "attempts": 0}
    assert conn.execute("select count(*) as n from ratchet.runs where workflow_id = %s",
                        (h.workflow_id,)).fetchone()["n"] == 0


def test_app_version_is_recorded_on_workflows_and_runs(dsn, conn, run_worker, monkeypatch):
    monkeypatch.setenv("RATCHET_APP_VERSION", "v2")
    app = ratchet.App(dsn, poll_interval=0.1)
    try:
        @app.workflow()
        def versioned() -> str:
            return "ok"

        h = app.start(versioned)
        run_worker(app)
        assert h.result(timeout=10) == "ok"
        assert app.app_version == "v2"
        assert conn.execute("select app_version from ratchet.workflows where workflow_id = %s",
                            (h.workflow_id,)).fetchone() == {"app_version": "v2"}
        assert conn.execute("select app_version, outcome from ratchet.runs "
                            "where workflow_id = %s", (h.workflow_id,)).fetchall() == [
            {"app_version": "v2", "outcome": "succeeded"}]
        assert ratchet.App(dsn, app_version="v3").app_version == "v3"
    finally:
        app.close()


def test_fork_reruns_from_a_step(app, run_worker):
    calls: list[str] = []

    @app.step()
    def a() -> str:
        calls.append("a")
        return "a"

    @app.step()
    def b() -> str:
        calls.append("b")
        return "b"

    @app.workflow()
    def flow() -> str:
        return a() + b()

    h = app.start(flow)
    run_worker()
    assert h.result(timeout=10) == "ab"
    forked = app.fork(h.workflow_id, from_step=1)
    assert forked.result(timeout=10) == "ab"
    assert calls == ["a", "b", "b"]


def test_handle_steps_and_info(app):
    @app.step()
    def one() -> int:
        return 1

    @app.workflow()
    def flow() -> int:
        return one()

    assert flow() == 1
    h = app.retrieve(last_workflow_id(app))
    assert h.status() == "succeeded"
    assert [s["name"] for s in h.steps()] == ["one"]
    assert h.info()["output"] == 1


def last_workflow_id(app: ratchet.App) -> str:
    with app.connection() as c:
        row: Any = c.execute("select workflow_id from ratchet.workflows "
                             "order by created_at desc limit 1").fetchone()
    return str(row[0])

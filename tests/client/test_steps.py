"""Decorators, step checkpoints, replay, the determinism guard, retries and errors."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from typing import Any

import psycopg
import pytest

import ratchet

Conn = psycopg.Connection[Any]


def fake_crashed_run(conn: Conn, workflow_id: str, steps: list[tuple[str, Any]]) -> None:
    """Pretend a worker claimed the workflow, recorded ``steps`` and died: claim it
    as a ghost worker, record the steps, and expire the lease."""
    row = conn.execute("select run_id from ratchet.claim_workflow(workflow_id => %s, "
                       "worker_id => 'ghost', lease => '30 seconds')", (workflow_id,)).fetchone()
    assert row is not None, "workflow was not claimable"
    for step_id, (name, output) in enumerate(steps):
        conn.execute("select ratchet.record_step(workflow_id => %s, run_id => %s, "
                     "step_id => %s, name => %s, output => %s::jsonb)",
                     (workflow_id, row["run_id"], step_id, name, json.dumps(output)))
    conn.execute("update ratchet.workflows set lease_expires_at = now() - interval '1 second' "
                 "where workflow_id = %s", (workflow_id,))


def test_worker_runs_steps_in_order_and_checkpoints_them(app, run_worker, conn):
    @app.step()
    def add(a: int, b: int) -> int:
        return a + b

    @app.step(name="double")
    def twice(x: int) -> list[int]:
        return [x, x]

    @app.workflow()
    def flow(x: int, *, y: int = 0) -> dict[str, Any]:
        s = add(x, y)
        return {"sum": s, "pair": twice(s)}

    handle = app.start(flow, 2, y=3)
    run_worker()
    assert handle.result(timeout=10) == {"sum": 5, "pair": [5, 5]}
    assert handle.status() == "succeeded"
    steps = handle.steps()
    assert [(s["step_id"], s["name"], s["output"]) for s in steps] == [
        (0, "add", 5), (1, "double", [5, 5])]
    row = conn.execute("select name, input from ratchet.workflows where workflow_id = %s",
                       (handle.workflow_id,)).fetchone()
    assert row == {"name": "flow", "input": {"args": [2], "kwargs": {"y": 3}}}


def test_direct_call_runs_the_workflow_durably_in_process(app, conn):
    calls = Counter()

    @app.step()
    def inc(x: int) -> int:
        calls["inc"] += 1
        return x + 1

    @app.workflow()
    def flow(x: int) -> int:
        return inc(inc(x))

    assert flow(1) == 3
    assert calls["inc"] == 2
    row = conn.execute("select workflow_id, status, output from ratchet.workflows").fetchone()
    assert row["status"] == "succeeded" and row["output"] == 3
    assert conn.execute("select count(*) as n from ratchet.steps where workflow_id = %s",
                        (row["workflow_id"],)).fetchone()["n"] == 2


def test_steps_outside_workflows_are_plain_calls(app, conn):
    @app.step(retries=3)
    def plain(x: int) -> tuple[int, int]:
        return (x, x)

    assert plain(4) == (4, 4)  # not JSON-roundtripped: nothing is recorded
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone()["n"] == 0
    assert ratchet.workflow_id() is None
    with pytest.raises(RuntimeError):
        ratchet.step_idempotency_key()
    with pytest.raises(RuntimeError):
        ratchet.recv()


def test_step_results_read_back_as_json(app):
    @app.step()
    def tup() -> tuple[int, int]:
        return (1, 2)

    @app.workflow()
    def flow() -> Any:
        value = tup()
        return {"type": type(value).__name__, "value": value}

    assert flow() == {"type": "list", "value": [1, 2]}


def test_replay_returns_recorded_results_without_running_steps(app, conn, run_worker):
    calls = Counter()

    @app.step()
    def fetch(x: int) -> int:
        calls["fetch"] += 1
        return x * 10

    @app.step()
    def store(v: int) -> str:
        calls["store"] += 1
        return f"stored {v}"

    @app.workflow()
    def flow(x: int) -> str:
        return store(fetch(x))

    handle = app.start(flow, 1)
    # A previous run recorded fetch -> 99 (not what fetch(1) would return now).
    fake_crashed_run(conn, handle.workflow_id, [("fetch", 99)])
    run_worker()
    assert handle.result(timeout=10) == "stored 99"
    assert calls == Counter({"store": 1})
    steps = handle.steps()
    assert [s["run_id"] for s in steps][0] != steps[1]["run_id"]


def test_determinism_guard_fails_the_run(app, conn, run_worker):
    @app.step()
    def first() -> int:
        return 1

    @app.workflow()
    def flow() -> str:
        try:
            first()
        except Exception:  # cannot swallow the error: the run fails anyway
            pass
        return "should not succeed"

    handle = app.start(flow)
    fake_crashed_run(conn, handle.workflow_id, [("something_else", 1)])
    run_worker()
    with pytest.raises(ratchet.WorkflowFailed) as err:
        handle.result(timeout=10)
    assert err.value.type == "ratchet.NonDeterminismError"
    assert "something_else" in err.value.message and "first" in err.value.message


def test_step_retries_with_backoff_then_succeeds(app, run_worker):
    calls = Counter()

    @app.step(retries=2, interval=0.05, backoff=2.0)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("try again")
        return "ok"

    @app.workflow()
    def flow() -> str:
        return flaky()

    t0 = time.monotonic()
    assert flow() == "ok"
    assert calls["flaky"] == 3
    assert time.monotonic() - t0 >= 0.05 + 0.1


def test_backoff_is_capped_by_max_delay(app):
    calls: list[float] = []

    @app.step(retries=2, interval=0.05, backoff=100.0, max_delay=0.1)
    def flaky() -> None:
        calls.append(time.monotonic())
        raise ValueError("nope")

    @app.workflow()
    def flow() -> str:
        try:
            flaky()
        except ratchet.StepError as exc:
            return exc.type
        return "no error"

    assert flow() == "ValueError"
    assert len(calls) == 3
    assert calls[2] - calls[1] < 1.0


def test_step_error_is_recorded_and_raised_as_step_error(app, conn):
    @app.step()
    def boom(x: int) -> None:
        raise KeyError(f"missing {x}")

    @app.workflow()
    def flow() -> dict[str, Any]:
        try:
            boom(7)
        except ratchet.StepError as exc:
            return {"type": exc.type, "message": exc.message, "step": exc.step_name,
                    "has_tb": "KeyError" in exc.traceback}
        return {}

    assert flow() == {"type": "KeyError", "message": "'missing 7'", "step": "boom",
                      "has_tb": True}
    step = conn.execute("select name, output, error from ratchet.steps").fetchone()
    assert step["name"] == "boom" and step["output"] is None
    assert step["error"]["type"] == "KeyError"
    assert "Traceback" in step["error"]["traceback"]


def test_uncaught_step_error_fails_the_workflow_with_the_original_type(app, run_worker):
    class PaymentDeclined(Exception):
        pass

    @app.step()
    def charge() -> None:
        raise PaymentDeclined("card declined")

    @app.workflow()
    def flow() -> None:
        charge()

    handle = app.start(flow)
    run_worker()
    with pytest.raises(ratchet.WorkflowFailed) as err:
        handle.result(timeout=10)
    assert err.value.type.endswith("PaymentDeclined")
    assert err.value.message == "card declined"
    assert err.value.error["step"] == "charge"
    assert err.value.status == "failed"
    assert handle.status() == "failed"


def test_replayed_step_error_is_raised_again_without_running(app, conn, run_worker):
    calls = Counter()

    @app.step()
    def risky() -> int:
        calls["risky"] += 1
        return 1

    @app.workflow()
    def flow() -> str:
        try:
            risky()
        except ratchet.StepError as exc:
            return f"caught {exc.type}"
        return "ran"

    handle = app.start(flow)
    row = conn.execute("select run_id from ratchet.claim_workflow(%s, 'ghost')",
                       (handle.workflow_id,)).fetchone()
    conn.execute("select ratchet.record_step(%s, %s, 0, 'risky', null, "
                 "'{\"type\": \"OSError\", \"message\": \"disk\"}'::jsonb)",
                 (handle.workflow_id, row["run_id"]))
    conn.execute("update ratchet.workflows set lease_expires_at = now() - interval '1 s' "
                 "where workflow_id = %s", (handle.workflow_id,))
    run_worker()
    assert handle.result(timeout=10) == "caught OSError"
    assert calls["risky"] == 0


def test_non_serializable_arguments_fail_at_the_call_site(app, conn):
    @app.workflow()
    def flow(x: Any) -> None:
        return None

    with pytest.raises(ratchet.SerializationError) as err:
        app.start(flow, object())
    assert isinstance(err.value, TypeError)
    assert "JSON" in str(err.value)
    with pytest.raises(ratchet.SerializationError):
        app.start(flow, float("nan"))
    with pytest.raises(ratchet.SerializationError):
        app.send("nobody", {1, 2})
    assert conn.execute("select count(*) as n from ratchet.workflows").fetchone()["n"] == 0


def test_non_serializable_results_fail_the_workflow(app):
    @app.step()
    def bad_step() -> Any:
        return {1, 2}

    @app.workflow()
    def step_flow() -> str:
        try:
            bad_step()
        except ratchet.StepError as exc:
            return exc.type
        return "no error"

    @app.workflow()
    def result_flow() -> Any:
        return object()

    assert step_flow() == "ratchet.SerializationError"
    with pytest.raises(ratchet.WorkflowFailed) as err:
        result_flow()
    assert err.value.type == "ratchet.SerializationError"


def test_step_timeout(app):
    calls = Counter()

    @app.step(timeout=0.2, retries=1, interval=0.01)
    def slow() -> None:
        calls["slow"] += 1
        time.sleep(1.0)

    @app.workflow()
    def flow() -> str:
        try:
            slow()
        except ratchet.StepError as exc:
            return exc.type
        return "finished"

    t0 = time.monotonic()
    assert flow() == "ratchet.StepTimeout"
    assert time.monotonic() - t0 < 0.9
    assert calls["slow"] == 2


def test_step_idempotency_key_and_workflow_id(app, run_worker):
    @app.step()
    def key() -> str:
        return ratchet.step_idempotency_key()

    @app.step()
    def wid() -> str | None:
        return ratchet.workflow_id()

    @app.workflow()
    def flow() -> list[Any]:
        return [key(), key(), wid(), ratchet.workflow_id()]

    handle = app.start(flow, workflow_id="order-1")
    run_worker()
    assert handle.result(timeout=10) == ["order-1:0", "order-1:1", "order-1", "order-1"]


def test_middleware_wraps_workflows_and_executed_steps(app):
    seen: list[tuple[str, str, int | None]] = []

    def callable_style(info: ratchet.ExecutionInfo, call_next: Any) -> Any:
        seen.append(("call", info.kind + ":" + info.name, info.step_id))
        return call_next()

    @contextlib.contextmanager
    def cm_style(info: ratchet.ExecutionInfo) -> Any:
        seen.append(("enter", info.kind + ":" + info.name, info.step_id))
        yield
        seen.append(("exit", info.kind + ":" + info.name, info.step_id))

    app.add_middleware(callable_style)
    app.add_middleware(cm_style)

    @app.step()
    def one() -> int:
        return 1

    @app.workflow()
    def flow() -> int:
        return one() + 1

    assert flow() == 2
    assert seen == [
        ("call", "workflow:flow", None), ("enter", "workflow:flow", None),
        ("call", "step:one", 0), ("enter", "step:one", 0), ("exit", "step:one", 0),
        ("exit", "workflow:flow", None)]


def test_workflow_retries(app, conn, run_worker):
    calls = Counter()

    @app.workflow(retries=2, retry_interval=0.01)
    def flow() -> str:
        calls["flow"] += 1
        if calls["flow"] < 2:
            raise RuntimeError("transient")
        return "ok"

    handle = app.start(flow)
    run_worker()
    assert handle.result(timeout=10) == "ok"
    assert calls["flow"] == 2


def test_workflow_exception_without_retries_fails(app, run_worker):
    @app.workflow()
    def flow() -> None:
        raise ValueError("bad input")

    handle = app.start(flow)
    run_worker()
    with pytest.raises(ratchet.WorkflowFailed) as err:
        handle.result(timeout=10)
    assert err.value.type == "ValueError" and err.value.message == "bad input"
    assert "Traceback" in err.value.traceback


def test_duplicate_workflow_names_are_rejected(app):
    @app.workflow(name="same")
    def a() -> None: ...

    with pytest.raises(ValueError):
        @app.workflow(name="same")
        def b() -> None: ...


def test_bare_decorators(app):
    @app.step
    def s(x: int) -> int:
        return x * 2

    @app.transaction
    def t(cur: psycopg.Cursor[Any], x: int) -> int:
        cur.execute("select %s::int + 1", (x,))
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    @app.workflow
    def w(x: int) -> int:
        return t(s(x))

    assert w(3) == 7


def test_too_large_result_fails_the_workflow(app):
    @app.workflow()
    def big() -> str:
        return "x" * 1_100_000

    with pytest.raises(ratchet.WorkflowFailed) as err:
        big()
    assert err.value.type == "ratchet.InvalidArgument"
    assert "1 MiB" in err.value.message

"""OpenTelemetry: a trace that spans the start call in this process and the
run and its steps in a worker subprocess (sync or async client), linked by
the trace context stored in the workflow row, across a kill -9 and the
recovery run too."""

from __future__ import annotations

import json
import os
import signal

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import ratchet  # noqa: E402


@pytest.fixture
def traced_app(dsn):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = ratchet.App(dsn, poll_interval=0.2, tracing=provider)
    yield app, exporter, provider
    app.close()


@pytest.fixture(params=["otelapp:app", "otelapp_async:app"], ids=["sync", "async"])
def otel_target(request: pytest.FixtureRequest) -> str:
    """The traced worker app: the sync or the async client."""
    return str(request.param)


def read_spans(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trace_spans_start_run_and_steps_across_processes(traced_app, spawn_worker,
                                                          tmp_path, conn, wait_until,
                                                          otel_target):
    app, exporter, provider = traced_app
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        handle = app.start("traced", 3, workflow_id="otel-1")
    started = {s.name: s for s in exporter.get_finished_spans()}
    start = started["ratchet.start traced"]
    assert start.parent.span_id == request.get_span_context().span_id
    assert start.attributes["ratchet.workflow_id"] == "otel-1"
    stored = conn.execute("select trace_context from ratchet.workflows "
                          "where workflow_id = 'otel-1'").fetchone()["trace_context"]
    trace_id = start.get_span_context().trace_id
    assert stored["traceparent"].startswith(
        f"00-{trace_id:032x}-{start.get_span_context().span_id:016x}-")

    spans_file = tmp_path / "spans.jsonl"
    spawn_worker(otel_target, env={"OTEL_SPANS_FILE": str(spans_file)})
    assert handle.result(timeout=30) == 6 + 8

    def spans():
        rows = read_spans(spans_file)
        return rows if any(r["name"] == "ratchet.workflow traced" for r in rows) else None

    rows = wait_until(spans, 10, "the worker's spans")
    run = next(r for r in rows if r["name"] == "ratchet.workflow traced")
    assert run["trace_id"] == trace_id and run["parent"] == start.get_span_context().span_id
    assert run["attributes"]["ratchet.workflow_id"] == "otel-1"
    assert run["attributes"]["ratchet.attempt"] == 1
    assert run["attributes"]["ratchet.outcome"] == "ok" and run["status"] == "UNSET"
    steps = [r for r in rows if r["name"].startswith("ratchet.step ")]
    assert [(s["name"], s["attributes"]["ratchet.step_id"]) for s in steps] == \
        [("ratchet.step fetch", 0), ("ratchet.step fetch", 1), ("ratchet.step explode", 2)]
    assert all(s["trace_id"] == trace_id and s["parent"] == run["span_id"] for s in steps)
    assert all(s["attributes"]["ratchet.workflow_id"] == "otel-1" for s in steps)
    bad = steps[2]
    assert bad["status"] == "ERROR" and bad["attributes"]["ratchet.outcome"] == "error"
    assert bad["attributes"]["ratchet.error_type"] == "ValueError"
    assert "exception" in bad["events"]
    assert steps[0]["attributes"]["ratchet.outcome"] == "ok"


def test_trace_continues_across_a_kill9_and_the_recovery_run(traced_app, spawn_worker,
                                                             tmp_path, conn, wait_until,
                                                             otel_target):
    """Worker A runs the first step and is killed (SIGKILL) before the second;
    worker B recovers the workflow. A's step span, B's run span and B's step
    span are all in the starter's trace; B's run is a child of the start span
    (not of A's run, whose span never ended), with attempt 2 and a new run id."""
    app, exporter, _ = traced_app
    handle = app.start("traced_crash", 5, workflow_id="otel-crash")
    start = next(s for s in exporter.get_finished_spans()
                 if s.name == "ratchet.start traced_crash")
    trace_id, start_id = start.context.trace_id, start.context.span_id
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    spans_file = tmp_path / "spans.jsonl"
    a = spawn_worker(otel_target, "--lease", "1",
                     env={"OTEL_SPANS_FILE": str(spans_file), "CRASH_BLOCK_AT": "between",
                          "CRASH_BARRIER_DIR": str(barrier)}, name="A")
    wait_until(lambda: (barrier / "between").exists(), 30, "worker A between the steps")
    os.kill(a.pid, signal.SIGKILL)
    a.wait(10)
    first = [r for r in read_spans(spans_file) if r["name"] == "ratchet.step fetch"]
    assert len(first) == 1 and first[0]["attributes"]["ratchet.step_id"] == 0
    spawn_worker(otel_target, "--lease", "1", env={"OTEL_SPANS_FILE": str(spans_file)},
                 name="B")
    assert handle.result(timeout=30) == 10 + 12

    def recovered():
        rows = read_spans(spans_file)
        return rows if any(r["name"] == "ratchet.workflow traced_crash" for r in rows) else None

    rows = wait_until(recovered, 10, "worker B's spans")
    runs = [r for r in rows if r["name"] == "ratchet.workflow traced_crash"]
    assert len(runs) == 1  # A's run span never ended: it was killed
    run_b = runs[0]
    assert run_b["trace_id"] == trace_id and run_b["parent"] == start_id
    assert run_b["attributes"]["ratchet.attempt"] == 2
    steps = [r for r in rows if r["name"] == "ratchet.step fetch"]
    # step 0 ran once, in A (B replays it: no span); step 1 ran in B
    assert [s["attributes"]["ratchet.step_id"] for s in steps] == [0, 1]
    step_a, step_b = steps
    assert step_a["trace_id"] == step_b["trace_id"] == trace_id
    assert step_b["parent"] == run_b["span_id"]
    assert step_a["parent"] != run_b["span_id"]
    assert step_a["attributes"]["ratchet.run_id"] != step_b["attributes"]["ratchet.run_id"]
    assert step_b["attributes"]["ratchet.run_id"] == run_b["attributes"]["ratchet.run_id"]


def test_children_join_the_parents_trace_and_tracing_off(dsn, traced_app, run_worker, conn):
    app, exporter, _ = traced_app

    @app.workflow()
    def kid() -> int:
        return 1

    @app.workflow()
    def parent() -> int:
        return app.start(kid).result()

    assert app.start(parent, workflow_id="parent-1") is not None
    run_worker(app)
    from helpers import poll

    poll(lambda: conn.execute("select status from ratchet.workflows where workflow_id = "
                              "'parent-1'").fetchone()["status"] == "succeeded", 30, "parent")
    spans = exporter.get_finished_spans()
    by_name = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    start = by_name["ratchet.start parent"][0]
    parent_runs = by_name["ratchet.workflow parent"]
    kid_run = by_name["ratchet.workflow kid"][0]
    # every run of the parent (it may suspend while its child runs) is in the start's trace
    assert parent_runs[-1].attributes["ratchet.outcome"] == "ok"
    assert {r.attributes["ratchet.outcome"] for r in parent_runs[:-1]} <= {"suspended"}
    assert all(r.parent.span_id == start.context.span_id for r in parent_runs)
    assert kid_run.context.trace_id == start.context.trace_id
    # the child continues the context of the parent's run that started it
    assert kid_run.parent.span_id in {r.context.span_id for r in parent_runs}
    assert kid_run.attributes["ratchet.workflow_id"] == "parent-1:0"

    off = ratchet.App(dsn, tracing=False)
    try:
        off.start("kid", workflow_id="untraced")
    finally:
        off.close()
    assert conn.execute("select trace_context from ratchet.workflows where workflow_id = "
                        "'untraced'").fetchone()["trace_context"] is None

"""OpenTelemetry: a trace that spans the start call in this process and the
run and its steps in a worker subprocess, linked by the trace context stored
in the workflow row."""

from __future__ import annotations

import json

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


def test_trace_spans_start_run_and_steps_across_processes(traced_app, spawn_worker,
                                                          tmp_path, conn, wait_until):
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
    spawn_worker("otelapp:app", env={"OTEL_SPANS_FILE": str(spans_file)})
    assert handle.result(timeout=30) == 6 + 8

    def spans():
        if not spans_file.exists():
            return None
        rows = [json.loads(line) for line in spans_file.read_text().splitlines()]
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

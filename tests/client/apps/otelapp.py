"""A worker app with OpenTelemetry tracing whose spans go, one JSON object a
line, to the file $OTEL_SPANS_FILE (read by tests/client/test_otel.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from crashapp import block
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import ratchet


class FileExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(os.environ["OTEL_SPANS_FILE"], "a") as f:
            for s in spans:
                ctx = s.get_span_context()
                f.write(json.dumps({
                    "name": s.name, "trace_id": ctx.trace_id, "span_id": ctx.span_id,
                    "parent": s.parent.span_id if s.parent else None,
                    "attributes": dict(s.attributes or {}),
                    "status": s.status.status_code.name,
                    "events": [e.name for e in s.events]}) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)

app = ratchet.App(poll_interval=0.2)


@app.step()
def fetch(n: int) -> int:
    return n * 2


@app.step(retries=0)
def explode() -> None:
    raise ValueError("boom")


@app.workflow(max_attempts=1)
def traced(n: int) -> int:
    total = fetch(n) + fetch(n + 1)
    try:
        explode()
    except Exception:
        pass
    return total


@app.workflow()
def traced_crash(n: int) -> int:
    """Blocks between its steps in a worker told to (CRASH_BLOCK_AT=between)."""
    first = fetch(n)
    block("between")
    return first + fetch(n + 1)

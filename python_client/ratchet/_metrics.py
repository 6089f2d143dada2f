"""Prometheus text exposition of :meth:`ratchet.App.metrics` and the workers view."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ._records import QueueMetrics, WorkerInfo

__all__ = ["prometheus_text"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(metrics: Sequence[QueueMetrics], workers: Sequence[WorkerInfo],
                    now: datetime) -> str:
    """The metrics in Prometheus' text format (version 0.0.4). Counts over the
    window are gauges (they are recomputed from the tables, not counters)."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str,
               samples: Sequence[tuple[dict[str, str], float | None]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {float(value):g}")

    def per_queue(name: str, help_: str, attr: str) -> None:
        family(name, "gauge", help_,
               [({"queue": m.queue}, getattr(m, attr)) for m in metrics])

    per_queue("ratchet_workflows_started", "Workflows started in the window", "started")
    family("ratchet_workflows_ended", "gauge", "Workflows ended in the window, by outcome",
           [({"queue": m.queue, "outcome": o}, getattr(m, o))
            for m in metrics for o in ("succeeded", "failed", "cancelled")])
    per_queue("ratchet_workflows_running", "Workflows running now", "running")
    per_queue("ratchet_queue_depth", "Due enqueued workflows", "enqueued_due")
    per_queue("ratchet_queue_waiting", "Enqueued workflows not due yet (delays, sleeps)",
              "enqueued_waiting")
    family("ratchet_queue_oldest_due_age_seconds", "gauge", "Age of the oldest due workflow",
           [({"queue": m.queue},
             m.oldest_due_age.total_seconds() if m.oldest_due_age is not None else 0.0)
            for m in metrics])
    per_queue("ratchet_steps", "Steps recorded in the window", "steps")
    family("ratchet_step_latency_seconds", "gauge", "Step latency quantiles in the window",
           [({"queue": m.queue, "quantile": q}, getattr(m, attr)) for m in metrics
            for q, attr in (("0.5", "step_p50_seconds"), ("0.95", "step_p95_seconds"),
                            ("1", "step_max_seconds"))])
    family("ratchet_worker_running", "gauge", "Workflows a live worker runs",
           [({"worker_id": w.worker_id}, w.running) for w in workers])
    family("ratchet_worker_heartbeat_age_seconds", "gauge", "Time since a worker's last heartbeat",
           [({"worker_id": w.worker_id}, (now - w.last_heartbeat).total_seconds())
            for w in workers])
    return "\n".join(out) + "\n"

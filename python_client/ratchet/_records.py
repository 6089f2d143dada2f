"""Typed, read-only records of workflows, steps, queues, schedules and workers.

Everything here is a plain ``SELECT`` on Ratchet's tables and views (which
both roles may read) or a call of ``ratchet.get_workflow``/``get_steps``; no
rule of the system is decided here. The records are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "QueueInfo",
    "ScheduleInfo",
    "StepInfo",
    "WorkerInfo",
    "WorkflowInfo",
    "WorkflowStatus",
]

ENDED = ("succeeded", "failed", "cancelled", "dead")


def _from_row(cls: Any, row: dict[str, Any]) -> Any:
    return cls(**{f.name: row.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class WorkflowInfo:
    """One row of ``ratchet.workflows`` (see ``docs/sql-api.md`` for each column)."""

    workflow_id: str
    name: str
    queue: str
    status: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    priority: int
    dedup_key: str | None
    attempts: int
    max_attempts: int
    run_id: int | None
    worker_id: str | None
    lease_expires_at: datetime | None
    start_at: datetime
    deadline: datetime | None
    parent_id: str | None
    forked_from: str | None
    wait_for: str | None
    wait_key: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WorkflowInfo:
        """A record from a row with the columns of ``ratchet.workflows``."""
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def ended(self) -> bool:
        """Whether the workflow has ended (succeeded, failed, cancelled, dead)."""
        return self.status in ENDED


@dataclass(frozen=True)
class StepInfo:
    """One recorded step (``ratchet.steps``): its output, or the error it
    failed with for good."""

    workflow_id: str
    step_id: int
    name: str
    output: Any
    error: dict[str, Any] | None
    run_id: int | None
    recorded_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StepInfo:
        """A record from a ``ratchet.steps`` row."""
        return _from_row(cls, row)  # type: ignore[no-any-return]


@dataclass(frozen=True, eq=False)
class WorkflowStatus:
    """What :meth:`WorkflowHandle.status` returns: the status and, for a
    workflow that is not running, why.

    ``waiting_for`` is one of ``None`` (running, or ended), ``"sleep"``
    (durable sleep until ``wake_at``), ``"message"`` (a message on topic
    ``wait_key``, or ``wake_at`` for the timeout), ``"child"`` (the end of
    child workflow ``wait_key``), ``"start_at"`` (delayed start or retry
    backoff until ``wake_at``), ``"paused_queue"``, or ``"worker"`` (due now:
    waiting for a worker to claim it). ``reason`` is one sentence for people;
    it may later come from ``ratchet.explain()`` where the database knows more.
    ``running_step`` is the number of the step a running workflow is at (the
    first step not recorded yet).

    For compatibility it compares equal to its status string
    (``handle.status() == "succeeded"``), and ``str()`` gives the status.
    """

    workflow_id: str
    status: str
    waiting_for: str | None = None
    wait_key: str | None = None
    wake_at: datetime | None = None
    reason: str | None = None
    running_step: int | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    attempts: int = 0
    error: dict[str, Any] | None = None

    def __str__(self) -> str:
        return self.status

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.status == other
        if isinstance(other, WorkflowStatus):
            return (self.workflow_id, self.status, self.waiting_for, self.wait_key,
                    self.wake_at) == (other.workflow_id, other.status, other.waiting_for,
                                      other.wait_key, other.wake_at)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.status)


@dataclass(frozen=True)
class QueueInfo:
    """One row of the ``ratchet.queue_stats`` view: limits and live counts."""

    queue: str
    paused: bool
    concurrency: int | None
    worker_concurrency: int | None
    rate_limit: int | None
    rate_period: timedelta | None
    enqueued_due: int
    enqueued_waiting: int
    running: int
    running_lease_expired: int
    oldest_due_at: datetime | None
    oldest_due_age: timedelta | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueueInfo:
        """A record from a ``ratchet.queue_stats`` row."""
        return _from_row(cls, row)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ScheduleInfo:
    """One row of ``ratchet.schedules``."""

    name: str
    cron: str
    timezone: str
    workflow_name: str
    input: Any
    queue: str
    next_fire_at: datetime
    last_fired_at: datetime | None
    last_workflow_id: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ScheduleInfo:
        """A record from a ``ratchet.schedules`` row."""
        return _from_row(cls, row)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as the workflows table shows it: a worker id holding at
    least one running workflow, and its last heartbeat (the latest lease
    renewal of those workflows). Idle workers hold no rows and are not shown."""

    worker_id: str
    running: int
    queues: list[str]
    last_heartbeat: datetime
    lease_expires_at: datetime
    expired: bool
    #: when the worker's longest-held current run was claimed
    oldest_claimed_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WorkerInfo:
        """A row of :data:`ratchet._queries.WORKERS` (the ``ratchet.workers`` view)."""
        return _from_row(cls, row)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class QueueMetrics:
    """One queue's row of ``ratchet.metrics(window)``: workflows started and
    ended by outcome within the window, live depth, and step latency in
    seconds (from the previous checkpoint of the run to the step's)."""

    queue: str
    started: int
    succeeded: int
    #: failed or dead
    failed: int
    cancelled: int
    running: int
    enqueued_due: int
    enqueued_waiting: int
    #: age of the oldest due enqueued workflow; None when none is due
    oldest_due_age: timedelta | None
    steps: int
    step_p50_seconds: float | None
    step_p95_seconds: float | None
    step_max_seconds: float | None
    window_start: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueueMetrics:
        """A record from a row of :data:`ratchet._queries.METRICS`."""
        return _from_row(cls, row)  # type: ignore[no-any-return]


def status_from_row(row: dict[str, Any]) -> WorkflowStatus:
    """Derive why a workflow waits from its row (see :data:`ratchet._queries.STATUS_DETAIL`)."""
    status = str(row["status"])
    base: dict[str, Any] = {"workflow_id": row["workflow_id"], "status": status,
                            "attempts": int(row.get("attempts") or 0), "error": row.get("error")}
    now = row.get("db_now")
    last_id = row.get("last_step_id")
    if status == "running":
        step = 0 if last_id is None else int(last_id) + 1
        return WorkflowStatus(**base, running_step=step, worker_id=row.get("worker_id"),
                              lease_expires_at=row.get("lease_expires_at"),
                              reason=f"running step #{step} on {row.get('worker_id')}")
    if status != "enqueued":
        return WorkflowStatus(**base, reason=f"ended {status}")
    start_at = row.get("start_at")
    future = start_at is not None and now is not None and start_at > now
    wake = start_at if future else None
    if row.get("queue_paused"):
        return WorkflowStatus(**base, waiting_for="paused_queue", wake_at=wake,
                              reason=f"queue {row['queue']!r} is paused")
    wait_for, key = row.get("wait_for"), row.get("wait_key")
    if wait_for == "message":
        topic = "the default topic" if not key else f"topic {key!r}"
        until = "" if wake is None or wake.year > 9000 else f" (timeout at {wake.isoformat()})"
        return WorkflowStatus(**base, waiting_for="message", wait_key=key, wake_at=wake,
                              reason=f"waiting for a message on {topic}{until}")
    if wait_for == "child":
        return WorkflowStatus(**base, waiting_for="child", wait_key=key, wake_at=wake,
                              reason=f"waiting for child workflow {key!r} to end")
    if future:
        assert wake is not None
        if row.get("last_step_name") == "sleep" and \
                (row.get("last_step_output") or {}).get("wake_at") is not None:
            return WorkflowStatus(**base, waiting_for="sleep", wake_at=wake,
                                  reason=f"sleeping until {wake.isoformat()}")
        why = "retry backoff" if row.get("error") is not None or base["attempts"] > 0 \
            else "delayed start"
        return WorkflowStatus(**base, waiting_for="start_at", wake_at=wake,
                              reason=f"not yet due ({why}) until {wake.isoformat()}")
    return WorkflowStatus(**base, waiting_for="worker",
                          reason="due: waiting for a worker of queue "
                                 f"{row['queue']!r} to claim it")

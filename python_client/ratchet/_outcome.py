"""The outcome of runs and workflows.

Ending a run (finish, fail, release: one SQL call each), and the other side:
waiting for a workflow to end and turning its outcome into a return value or
an exception, inside a workflow (a checkpointed ``result`` step) or outside.
The payload helpers are pure functions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from . import _queries
from ._context import WorkflowContext
from ._errors import WorkflowCancelled, WorkflowFailed, _RunAborted
from ._json import dumps
from ._listener import ENDED
from ._waits import durable_deadline, wait_for, wait_slice

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("ratchet")

#: the statuses a workflow ends in
ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "dead"})


def unknown_workflow_error(name: str) -> dict[str, Any]:
    """The error a run of a workflow no registered function has fails with."""
    return {"type": "UnknownWorkflow",
            "message": f"no workflow named {name!r} is registered with the worker",
            "traceback": None}


def undecodable_error(reason: str) -> dict[str, Any]:
    """The error a workflow whose input or recorded steps cannot be decoded fails
    with (for good: the same input fails the same way again)."""
    return {"type": "UndecodableInput",
            "message": f"the workflow's input or recorded steps cannot be decoded as JSON "
                       f"by the worker ({reason[:1000]})",
            "traceback": None}


# -- ending a run --------------------------------------------------------------


def release(ctx: WorkflowContext, why: str) -> bool:
    """Hand the workflow back (suspend until now, costing no attempt) so any
    worker can claim it at once. Quietly does nothing if the run is no longer
    current. Returns whether it released it."""
    ctx.abort(_RunAborted(f"released: {why}"))
    try:
        with ctx.app._db.connection() as conn:
            ctx.app._db.run(conn, _queries.SUSPEND, (ctx.workflow_id, ctx.run_id, None, None, None))
    except Exception as exc:
        state = getattr(exc, "sqlstate", None)
        if state not in ("RT002", "RT006"):
            logger.warning("could not release workflow %s (%s); its lease will "
                           "expire instead", ctx.workflow_id, exc, extra=ctx.log_extra())
        return False
    logger.info("released workflow %s (%s)", ctx.workflow_id, why,
                extra=ctx.log_extra())
    return True


def give_up(ctx: WorkflowContext, lost: _RunAborted) -> bool:
    """A run that ended without an outcome: release it when ``lost`` says so
    (returns True), else drop it (the database holds it; returns False)."""
    if lost.release:
        release(ctx, lost.reason)
        return True
    logger.info("workflow %s: %s; dropping this run", ctx.workflow_id,
                lost.reason, extra=ctx.log_extra())
    return False


def end_call(ctx: WorkflowContext, query: str, params: Any) -> str | None:
    """finish/fail: returns the row's first value, or None if the run was lost."""
    try:
        row = ctx.call(query, params)
    except _RunAborted as lost:
        give_up(ctx, lost)
        return None
    if row is None:
        return ""
    value = next(iter(row.values()), None)
    return "" if value is None else str(value)


def finish_batched(ctx: WorkflowContext, output: str) -> str | None:
    """finish through the worker's batcher (one commit for many finishes);
    like :func:`end_call`: None if the run was lost. Returns once the batch
    committed. A batch cut off by a lost connection is sent again while this
    run's lease holds (``ctx.lease_until``); only past it is the run released."""
    try:
        ctx.check()
        try:
            outcome = ctx.finisher.finish(ctx.workflow_id, ctx.run_id, output, ctx.lease_until)
        except psycopg.Error as exc:
            raise ctx.run_error(exc) from exc
        if outcome != "ok":
            raise ctx.abort(_RunAborted(f"{outcome.replace('_', ' ')} (finish_and_claim)"))
    except _RunAborted as lost:
        give_up(ctx, lost)
        return None
    return ""


# -- results -----------------------------------------------------------------------


def raise_outcome(workflow_id: str, status: str, output: Any, error: Any) -> Any:
    """An ended workflow's output, or its outcome raised (:class:`WorkflowFailed`,
    :class:`WorkflowCancelled`). No I/O."""
    if status == "succeeded":
        return output
    if status == "cancelled":
        raise WorkflowCancelled(workflow_id, error)
    raise WorkflowFailed(workflow_id, status, error)


def outcome_payload(workflow_id: str, status: str, error: Any) -> dict[str, Any]:
    """The error recorded for a ``result`` step whose workflow did not succeed
    (what :func:`replay_result` raises again). No I/O."""
    kind = "WorkflowCancelled" if status == "cancelled" else "WorkflowFailed"
    err = error or {}
    return {"type": kind, "message": f"workflow {workflow_id!r} {status}: "
            f"{err.get('type', '')}: {err.get('message', '')}",
            "child_id": workflow_id, "status": status, "error": error}


def timeout_payload(workflow_id: str, timeout: float | None) -> dict[str, Any]:
    """The error recorded for a ``result`` step that timed out. No I/O."""
    return {"type": "TimeoutError",
            "message": f"workflow {workflow_id!r} did not end within {timeout} s"}


def replay_result(rec: dict[str, Any], workflow_id: str) -> Any:
    """A recorded ``result`` step: the output, or the recorded outcome (failed,
    cancelled, timed out) raised again. No I/O."""
    err = rec.get("error")
    if err is None:
        return rec.get("output")
    kind = err.get("type")
    if kind == "TimeoutError":
        raise TimeoutError(err.get("message"))
    if kind == "WorkflowCancelled":
        raise WorkflowCancelled(workflow_id, err.get("error"))
    raise WorkflowFailed(workflow_id, str(err.get("status") or "failed"), err.get("error"))


def child_result(ctx: WorkflowContext, workflow_id: str, timeout: float | None) -> Any:
    """Wait for another workflow's result inside a workflow, as a checkpointed
    step; a long wait releases the worker until the child ends."""
    wake_at: Any = None
    if timeout is not None:
        sleep_id = ctx.take_step()
        rec_sleep = ctx.lookup(sleep_id, "sleep")
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, "result")
        if rec is None:
            wake_at = durable_deadline(ctx, sleep_id, rec_sleep, timeout)
    else:
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, "result")
    if rec is not None:
        return replay_result(rec, workflow_id)
    app = ctx.app
    started = time.monotonic()
    with app._listener.subscribe(ENDED, workflow_id) as sub:
        while True:
            row = ctx.call(_queries.CHILD_STATUS, (wake_at, wake_at, workflow_id))
            assert row is not None
            status = row["status"]
            if status in ENDED_STATUSES:
                if status == "succeeded":
                    ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, "result",
                                               dumps(row["output"], "child output"), None))
                else:
                    payload = outcome_payload(workflow_id, status, row["error"])
                    ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, "result",
                                               None, dumps(payload, "child error")))
                return raise_outcome(workflow_id, status, row["output"], row["error"])
            remaining = row["remaining"]
            if remaining is not None and remaining <= 0:
                payload = timeout_payload(workflow_id, timeout)
                ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, "result",
                                                None, dumps(payload, "error")))
                raise TimeoutError(payload["message"])
            sub.wait(wait_slice(ctx, started, remaining, wake_at, "child", workflow_id))
            ctx.check()


def ended_check(app: App, workflow_id: str) -> Callable[[], tuple[bool, Any]]:
    """A :func:`wait_for` check: whether the workflow ended, with its status row."""

    def check() -> tuple[bool, Any]:
        row = app._db.fetchone(_queries.STATUS, (workflow_id,))
        assert row is not None
        return row["status"] in ENDED_STATUSES, row

    return check


def workflow_result(app: App, workflow_id: str, timeout: float | None,
                    stop: threading.Event | None = None) -> Any:
    """Wait outside workflows (LISTEN ``ratchet.ended`` plus polling) and return
    the workflow's output, or raise its outcome."""

    check = ended_check(app, workflow_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, row = wait_for(app, ENDED, workflow_id, check,
                             3600.0 if left is None else left, stop)
        if done:
            return raise_outcome(workflow_id, row["status"], row["output"], row["error"])
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"workflow {workflow_id!r} did not end within {timeout} s "
                               f"(status {row['status']})")

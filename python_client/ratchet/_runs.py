"""Running a claimed workflow: its user code around the extension's SQL calls.

Nothing here decides what runs when: claiming, leases, retries' timing and
recovery are all in SQL. This module decodes a claimed row, runs the
workflow function (steps replay from the recorded rows), and turns the
outcome into the one SQL call that records it. Workers, direct calls and
nested direct calls share it, and the heartbeat that renews their leases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from . import _queries
from ._context import WorkflowContext, current_step, current_workflow
from ._errors import (
    NonDeterminismError,
    RatchetError,
    SerializationError,
    _ControlFlow,
    _RunAborted,
    _Suspended,
    error_payload,
)
from ._json import decode_input, dumps
from ._listener import ENDED
from ._middleware import ExecutionInfo
from ._outcome import (
    end_call,
    ended_check,
    finish_batched,
    give_up,
    raise_outcome,
    release,
    undecodable_error,
    unknown_workflow_error,
)
from ._waits import wait_for

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("ratchet")


def context_from_claim(app: App, row: dict[str, Any], worker_id: str,
                       lease: float) -> WorkflowContext | None:
    """The context of a claimed row, or None when its input or recorded steps
    cannot be decoded (nested deeper than Python's decoder goes, invalid data
    written by an old version): then that workflow alone fails, with the
    reason stored as its error, and the rest of the claimed batch runs."""
    try:
        return WorkflowContext.from_claim(app, row, worker_id, lease)
    except DECODE_ERRORS as exc:
        params = undecodable_failure(row, exc)
    try:
        app._db.fetchone(_queries.FAIL, params)
    except Exception as fail_exc:  # its lease expires; recovery retries the failure
        logger.warning("could not record the failure of workflow %s: %s",
                       params[0], fail_exc, extra={"workflow_id": params[0]})
    return None


#: what decoding a claimed row can raise (input nested too deep, bad data)
DECODE_ERRORS = (ValueError, TypeError, KeyError, RecursionError)


def undecodable_failure(row: dict[str, Any], exc: BaseException) -> tuple[Any, ...]:
    """Log that a claimed row cannot be decoded and return the parameters of
    :data:`ratchet._queries.FAIL` that fail it for good (retryable false: the
    same input fails the same way again). No I/O; both clients share it."""
    reason = f"{type(exc).__name__}: {exc}"
    workflow_id = str(row.get("workflow_id"))
    logger.error("workflow %s has an input or recorded step this worker cannot "
                 "decode (%s); failing it", workflow_id, reason,
                 extra={"workflow_id": workflow_id, "run_id": row.get("run_id")})
    return (workflow_id, row.get("run_id"),
            dumps(undecodable_error(reason), "the workflow error"), False, None)


def heartbeat_loop(app: App, worker_id: str, lease: float,
                   stop: Callable[[float], bool],
                   running: Callable[[], list[str] | None],
                   renewed: Callable[[float], None] | None = None) -> None:
    """Renew the leases of ``worker_id``'s runs every ``lease / 3`` seconds until
    ``stop(interval)`` (which waits up to ``interval``) returns True. ``running()``
    gives the workflow ids to renew: None for every run of the worker, an empty
    list to skip this beat. A failed beat is logged; the next one retries (the
    lease outlives two missed beats). The worker and direct calls share it."""
    interval = lease / 3
    while not stop(interval):
        ids = running()
        if ids is not None and not ids:
            continue
        sent = time.monotonic()
        try:
            app._db.fetchone(_queries.HEARTBEAT, (worker_id, lease, ids))
        except Exception as exc:
            logger.warning("heartbeat failed: %s", exc)
        else:
            if renewed is not None:  # the fenced writes retry until the new lease end
                renewed(sent)


def run_workflow(ctx: WorkflowContext) -> str:
    """Run a claimed workflow to the end of this run and record the outcome.

    Returns ``succeeded``, ``failed`` (or the status ``fail`` returned, such as
    ``enqueued`` for a retry), ``suspended``, ``lost`` (stale or cancelled: the
    run was dropped) or ``released``.
    """
    app = ctx.app
    wf = app._workflows.get(ctx.name)
    extra = ctx.log_extra()
    if wf is None:
        logger.error("no workflow named %r is registered in this app (workflow %s); "
                     "failing this attempt", ctx.name, ctx.workflow_id, extra=extra)
        error = unknown_workflow_error(ctx.name)
        status = end_call(ctx, _queries.FAIL_RETRY_IN, (ctx.workflow_id, ctx.run_id,
                                                    dumps(error, "error"), 30.0))
        return "lost" if status is None else status or "failed"
    token = current_workflow.set(ctx)
    step_token = current_step.set(None)
    interrupted = False
    try:
        args, kwargs = decode_input(ctx.input)
        logger.debug("running workflow %s (%s), attempt %d", ctx.workflow_id,
                     ctx.name, ctx.attempt, extra=extra)
        if app._middleware:
            info = ExecutionInfo("workflow", ctx.name, ctx.workflow_id, ctx.run_id, ctx.attempt)
            result = app._middleware.run(info, lambda: wf.fn(*args, **kwargs))
        else:
            result = wf.fn(*args, **kwargs)
        raised: BaseException | None = None
    except _ControlFlow as signal:
        result, raised = None, signal
    except Exception as exc:
        result, raised = None, exc
    except BaseException:  # KeyboardInterrupt, SystemExit: hand the workflow back
        interrupted = True
        raise
    finally:
        current_step.reset(step_token)
        current_workflow.reset(token)
        if interrupted:
            release(ctx, "interrupted")

    # The run may have ended even if user code swallowed the signal.
    if ctx.ended is not None:
        raised = ctx.ended
    if isinstance(raised, _Suspended):
        return "suspended"
    if isinstance(raised, _RunAborted):
        return "released" if give_up(ctx, raised) else "lost"
    if ctx.fatal is not None:
        raised = ctx.fatal
    if raised is None:
        try:
            output = dumps(result, f"the result of workflow {ctx.name!r}")
        except SerializationError as exc:
            raised = exc
        else:
            try:
                if ctx.finisher is not None:
                    status = finish_batched(ctx, output)
                else:
                    status = end_call(ctx, _queries.FINISH, (ctx.workflow_id, ctx.run_id, output))
            except RatchetError as exc:  # e.g. RT005: the output is too large
                raised = exc
            else:
                if status is None:
                    return "lost"
                logger.info("workflow %s succeeded", ctx.workflow_id, extra=extra)
                return "succeeded"
    error = error_payload(raised)
    # The database decides whether and when to retry (the workflow's policy).
    policy = None if wf.retry_policy is None else dumps(wf.retry_policy, "the retry policy")
    status = end_call(ctx, _queries.FAIL, (ctx.workflow_id, ctx.run_id,
                                       dumps(error, "the workflow error"),
                                       not isinstance(raised, NonDeterminismError), policy))
    if status is None:
        return "lost"
    logger.info("workflow %s failed (%s: %s) -> %s", ctx.workflow_id,
                error.get("type"), error.get("message"), status or "failed", extra=extra)
    return status or "failed"


def claim_and_run(app: App, workflow_id: str, worker_id: str, lease: float) -> None:
    """Claim one workflow by id (if it is claimable now) and run it in this
    thread under ``worker_id``."""
    rows = app._db.fetchall(_queries.CLAIM_WORKFLOW, {
        "workflow_id": workflow_id, "worker_id": worker_id, "lease": lease,
        "app_version": app.app_version})
    for row in rows:
        ctx = context_from_claim(app, dict(row), worker_id, lease)
        if ctx is not None:
            run_workflow(ctx)


def run_directly(app: App, workflow_id: str, worker_id: str, lease: float) -> Any:
    """Run a workflow in this process, durably: claim it whenever it is
    claimable (it may sleep, wait or be retried), until it ends. A worker may
    claim it first; then this just waits for the result."""
    ended = ended_check(app, workflow_id)
    while True:
        claim_and_run(app, workflow_id, worker_id, lease)
        done, status = wait_for(app, ENDED, workflow_id, ended, app.poll_interval)
        if done:
            return raise_outcome(workflow_id, status["status"], status["output"],
                                  status["error"])


def nested_run(parent: WorkflowContext, workflow_id: str) -> None:
    """Run a child started by a direct call inside a workflow in this thread,
    under the parent's worker (whose heartbeat renews its lease too)."""
    try:
        claim_and_run(parent.app, workflow_id, parent.worker_id, parent.lease)
    except psycopg.Error as exc:  # e.g. a lost connection: stops the parent's run, not fails it
        raise parent.run_error(exc) from exc

"""Running a claimed async workflow and recording its outcome: the async
twin of :mod:`ratchet._runs` and the run-ending half of
:mod:`ratchet._outcome` (the same SQL calls, the same rules: only user code
fails a step or a workflow; a lost run is dropped or released)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import _queries
from .._context import current_step, current_workflow
from .._errors import (
    NonDeterminismError,
    RatchetError,
    SerializationError,
    _ControlFlow,
    _RunAborted,
    _Suspended,
    error_payload,
)
from .._json import decode_input, dumps
from .._listener import ENDED
from .._middleware import ExecutionInfo
from .._outcome import ENDED_STATUSES, raise_outcome, unknown_workflow_error
from .._runs import DECODE_ERRORS, undecodable_failure
from ._context import AsyncWorkflowContext
from ._waits import wait_for

if TYPE_CHECKING:
    from ._app import AsyncApp

logger = logging.getLogger("ratchet")


async def context_from_claim(app: AsyncApp, row: dict[str, Any], worker_id: str,
                             lease: float) -> AsyncWorkflowContext | None:
    """The context of a claimed row, or None when it cannot be decoded: then
    that workflow alone fails for good (see :func:`ratchet._runs.context_from_claim`)."""
    try:
        return AsyncWorkflowContext.from_claim(app, row, worker_id, lease)
    except DECODE_ERRORS as exc:
        params = undecodable_failure(row, exc)
    try:
        await app._db.fetchone(_queries.FAIL, params)
    except Exception as fail_exc:  # its lease expires; recovery retries the failure
        logger.warning("could not record the failure of workflow %s: %s",
                       params[0], fail_exc, extra={"workflow_id": params[0]})
    return None


async def release(ctx: AsyncWorkflowContext, why: str) -> bool:
    """Hand the workflow back at once (see :func:`ratchet._outcome.release`)."""
    ctx.abort(_RunAborted(f"released: {why}"))
    try:
        await ctx.app._db.fetchone(_queries.SUSPEND,
                                   (ctx.workflow_id, ctx.run_id, None, None, None))
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, RatchetError) else exc
        if getattr(cause, "sqlstate", None) not in ("RT002", "RT006"):
            logger.warning("could not release workflow %s (%s); its lease will "
                           "expire instead", ctx.workflow_id, exc, extra=ctx.log_extra())
        return False
    logger.info("released workflow %s (%s)", ctx.workflow_id, why, extra=ctx.log_extra())
    return True


async def give_up(ctx: AsyncWorkflowContext, lost: _RunAborted) -> bool:
    """Release the run when ``lost`` says so (True), else drop it (False)."""
    if lost.release:
        await release(ctx, lost.reason)
        return True
    logger.info("workflow %s: %s; dropping this run", ctx.workflow_id, lost.reason,
                extra=ctx.log_extra())
    return False


async def end_call(ctx: AsyncWorkflowContext, query: str, params: Any) -> str | None:
    """finish/fail: the row's first value, or None if the run was lost."""
    try:
        row = await ctx.call(query, params)
    except _RunAborted as lost:
        await give_up(ctx, lost)
        return None
    if row is None:
        return ""
    value = next(iter(row.values()), None)
    return "" if value is None else str(value)


async def run_workflow(ctx: AsyncWorkflowContext) -> str:
    """Run a claimed async workflow to the end of this run and record the
    outcome; returns what :func:`ratchet._runs.run_workflow` returns."""
    app = ctx.app
    wf = app._workflows.get(ctx.name)
    extra = ctx.log_extra()
    if wf is None:
        logger.error("no workflow named %r is registered in this app (workflow %s); "
                     "failing this attempt", ctx.name, ctx.workflow_id, extra=extra)
        status = await end_call(ctx, _queries.FAIL_RETRY_IN, (
            ctx.workflow_id, ctx.run_id, dumps(unknown_workflow_error(ctx.name), "error"),
            30.0))
        return "lost" if status is None else status or "failed"
    token = current_workflow.set(ctx)
    step_token = current_step.set(None)
    raised: BaseException | None = None
    result: Any = None
    try:
        args, kwargs = decode_input(ctx.input)
        info = ExecutionInfo("workflow", ctx.name, ctx.workflow_id, ctx.run_id, ctx.attempt)
        logger.debug("running workflow %s (%s), attempt %d", ctx.workflow_id,
                     ctx.name, ctx.attempt, extra=extra)
        result = await app._run_middleware(info, lambda: wf.fn(*args, **kwargs))
    except _ControlFlow as signal:
        raised = signal
    except asyncio.CancelledError:  # the worker is stopping (or the loop): hand it back
        await asyncio.shield(release(ctx, "interrupted"))
        raise
    except Exception as exc:
        raised = exc
    except BaseException:  # KeyboardInterrupt, SystemExit: hand the workflow back
        await release(ctx, "interrupted")
        raise
    finally:
        current_step.reset(step_token)
        current_workflow.reset(token)

    if ctx.ended is not None:
        raised = ctx.ended
    if isinstance(raised, _Suspended):
        return "suspended"
    if isinstance(raised, _RunAborted):
        return "released" if await give_up(ctx, raised) else "lost"
    if ctx.fatal is not None:
        raised = ctx.fatal
    if raised is None:
        try:
            output = dumps(result, f"the result of workflow {ctx.name!r}")
            status = await end_call(ctx, _queries.FINISH, (ctx.workflow_id, ctx.run_id, output))
        except (SerializationError, RatchetError) as exc:  # e.g. RT005: too large
            raised = exc
        else:
            if status is None:
                return "lost"
            logger.info("workflow %s succeeded", ctx.workflow_id, extra=extra)
            return "succeeded"
    error = error_payload(raised)
    policy = None if wf.retry_policy is None else dumps(wf.retry_policy, "the retry policy")
    status = await end_call(ctx, _queries.FAIL, (ctx.workflow_id, ctx.run_id,
                                                 dumps(error, "the workflow error"),
                                                 not isinstance(raised, NonDeterminismError),
                                                 policy))
    if status is None:
        return "lost"
    logger.info("workflow %s failed (%s: %s) -> %s", ctx.workflow_id,
                error.get("type"), error.get("message"), status or "failed", extra=extra)
    return status or "failed"


async def claim_and_run(app: AsyncApp, workflow_id: str, worker_id: str, lease: float) -> None:
    """Claim one workflow by id (if claimable) and run it in this task."""
    rows = await app._db.fetchall(_queries.CLAIM_WORKFLOW, {
        "workflow_id": workflow_id, "worker_id": worker_id, "lease": lease,
        "app_version": app.app_version})
    for row in rows:
        ctx = await context_from_claim(app, dict(row), worker_id, lease)
        if ctx is not None:
            await run_workflow(ctx)


def ended_check(app: AsyncApp, workflow_id: str) -> Callable[[], Awaitable[tuple[bool, Any]]]:
    """A :func:`wait_for` check: whether the workflow ended, with its status row."""

    async def check() -> tuple[bool, Any]:
        row = await app._db.fetchone(_queries.STATUS, (workflow_id,))
        assert row is not None
        return row["status"] in ENDED_STATUSES, row

    return check


async def run_directly(app: AsyncApp, workflow_id: str, worker_id: str, lease: float) -> Any:
    """Run a workflow in this task, durably, until it ends (claiming it
    whenever it is claimable; a worker may run it instead)."""
    check = ended_check(app, workflow_id)
    while True:
        await claim_and_run(app, workflow_id, worker_id, lease)
        done, row = await wait_for(app, ENDED, workflow_id, check, app.poll_interval)
        if done:
            return raise_outcome(workflow_id, row["status"], row["output"], row["error"])


async def workflow_result(app: AsyncApp, workflow_id: str, timeout: float | None) -> Any:
    """Wait outside workflows and return the output, or raise the outcome."""
    check = ended_check(app, workflow_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, row = await wait_for(app, ENDED, workflow_id, check,
                                   3600.0 if left is None else left)
        if done:
            return raise_outcome(workflow_id, row["status"], row["output"], row["error"])
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"workflow {workflow_id!r} did not end within {timeout} s "
                               f"(status {row['status']})")


async def heartbeat_loop(app: AsyncApp, worker_id: str, lease: float, stop: asyncio.Event,
                         running: Callable[[], list[str] | None],
                         renewed: Callable[[float], None] | None = None) -> None:
    """Renew ``worker_id``'s leases every ``lease / 3`` seconds until ``stop``
    is set (see :func:`ratchet._runs.heartbeat_loop`)."""
    interval = lease / 3
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except asyncio.TimeoutError:
            pass
        ids = running()
        if ids is not None and not ids:
            continue
        sent = time.monotonic()
        try:
            await app._db.fetchone(_queries.HEARTBEAT, (worker_id, lease, ids))
        except Exception as exc:
            logger.warning("heartbeat failed: %s", exc)
        else:
            if renewed is not None:
                renewed(sent)



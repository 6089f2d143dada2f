"""Running workflow code around the extension's SQL functions.

Nothing here decides what runs when: claiming, leases, retries' timing and
recovery are all in SQL. This module executes user code, replays recorded
steps, and turns each outcome into the one SQL call that records it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from . import _queries
from ._context import StepContext, WorkflowContext, active_workflow, current_step, current_workflow
from ._errors import (
    NonDeterminismError,
    RatchetError,
    SerializationError,
    StepTimeout,
    WorkflowCancelled,
    WorkflowFailed,
    _ControlFlow,
    _RunAborted,
    _Suspended,
    error_payload,
    step_error,
)
from ._json import decode_input, dumps
from ._listener import ENDED, EVENT, MESSAGE
from ._middleware import ExecutionInfo

if TYPE_CHECKING:
    from ._app import App, StepBase

logger = logging.getLogger("ratchet")

T = TypeVar("T")

ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "dead"})


def _require(what: str) -> WorkflowContext:
    ctx = active_workflow()
    if ctx is None:
        raise RuntimeError(f"ratchet.{what}() can only be called inside a workflow "
                           "(and not inside a step)")
    return ctx


# -- steps --------------------------------------------------------------------


def call_with_timeout(fn: Callable[[], T], timeout: float | None, name: str) -> T:
    """Call ``fn``; with a timeout, in a helper thread that is abandoned (Python
    cannot kill a thread) if it runs longer, raising :class:`StepTimeout`."""
    if timeout is None:
        return fn()
    box: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(fn)
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"ratchet-step-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StepTimeout(f"step {name!r} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class Checkpointed:
    """A step result that was already recorded (transactional steps record in
    their own transaction)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def replay_step(rec: dict[str, Any], step_id: int, name: str) -> Any:
    """A recorded step's result: its output, or its error raised again."""
    if rec.get("error") is not None:
        raise step_error(rec["error"], step_id, name)
    return rec.get("output")


def run_step(step: StepBase, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a step inside the current workflow (checkpointed), or as plain code
    outside workflows and inside other steps."""
    ctx = active_workflow()
    if ctx is None:
        return step._run_plain(args, kwargs)
    step_id = ctx.take_step()
    rec = ctx.lookup(step_id, step.name)
    if rec is not None:
        return replay_step(rec, step_id, step.name)
    info = ExecutionInfo("step", step.name, ctx.workflow_id, ctx.run_id, ctx.attempt, step_id)
    return ctx.app._middleware.run(info, lambda: _execute_step(ctx, step, step_id, args, kwargs))


def _execute_step(ctx: WorkflowContext, step: StepBase, step_id: int,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    attempt = 0
    while True:
        attempt += 1
        token = current_step.set(StepContext(ctx.workflow_id, step_id, step.name, attempt))
        try:
            result = step._attempt(ctx, step_id, args, kwargs)
            if isinstance(result, Checkpointed):
                return result.value
            output = dumps(result, f"the result of step {step.name!r}")
        except _ControlFlow:
            raise
        except Exception as exc:
            ctx.check()  # a failure caused by the run ending is not the step's
            delay = _step_retry_delay(ctx, step, attempt)
            if delay is not None:
                logger.info("step %s (#%d) of %s failed (%s: %s); retry %d/%d in "
                            "%.2f s", step.name, step_id, ctx.workflow_id, type(exc).__name__,
                            exc, attempt, step.retries, delay, extra=ctx.log_extra(step_id))
                ctx.pause(delay)
                continue
            error = error_payload(exc)
            error["attempts"] = attempt
            ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, step.name,
                                       None, dumps(error, "the step error")))
            raise step_error(error, step_id, step.name) from exc
        finally:
            current_step.reset(token)
        ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, step.name,
                                   output, None))
        return json.loads(output)


# -- running a claimed workflow -------------------------------------------------


def _step_retry_delay(ctx: WorkflowContext, step: StepBase, attempt: int) -> float | None:
    """Seconds before retrying a step whose attempt ``attempt`` raised, from its
    policy, computed by the database; None when it is not retried."""
    if step.retry_policy is None:
        return None
    row = ctx.call(_queries.RETRY_DELAY, (dumps(step.retry_policy, "the retry policy"), attempt))
    return None if row is None or row["delay"] is None else float(row["delay"])


def context_from_claim(app: App, row: dict[str, Any], worker_id: str,
                       lease: float) -> WorkflowContext | None:
    """The context of a claimed row, or None when its input or recorded steps
    cannot be decoded (nested deeper than Python's decoder goes, invalid data
    written by an old version): then that workflow alone fails, with the
    reason stored as its error, and the rest of the claimed batch runs."""
    try:
        return WorkflowContext.from_claim(app, row, worker_id, lease)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    workflow_id = str(row.get("workflow_id"))
    logger.error("workflow %s has an input or recorded step this worker cannot "
                 "decode (%s); failing it", workflow_id, reason,
                 extra={"workflow_id": workflow_id, "run_id": row.get("run_id")})
    error = {"type": "UndecodableInput",
             "message": f"the workflow's input or recorded steps cannot be decoded as JSON "
                        f"by the worker ({reason[:1000]})",
             "traceback": None}
    try:
        # for good (retryable false): the same input fails the same way again
        app._db.fetchone(_queries.FAIL, (workflow_id, row.get("run_id"),
                                         dumps(error, "the workflow error"), False, None))
    except Exception as fail_exc:  # its lease expires; recovery retries the failure
        logger.warning("could not record the failure of workflow %s: %s",
                       workflow_id, fail_exc, extra={"workflow_id": workflow_id})
    return None


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


def _end_call(ctx: WorkflowContext, query: str, params: Any) -> str | None:
    """finish/fail: returns the row's first value, or None if the run was lost."""
    try:
        row = ctx.call(query, params)
    except _RunAborted as lost:
        if lost.release:
            release(ctx, lost.reason)
        else:
            logger.info("workflow %s: %s; dropping this run", ctx.workflow_id,
                        lost.reason, extra=ctx.log_extra())
        return None
    if row is None:
        return ""
    value = next(iter(row.values()), None)
    return "" if value is None else str(value)


def _finish_batched(ctx: WorkflowContext, output: str) -> str | None:
    """finish through the worker's batcher (one commit for many finishes);
    like :func:`_end_call`: None if the run was lost. Returns once the batch
    committed."""
    try:
        ctx.check()
        try:
            outcome = ctx.finisher.finish(ctx.workflow_id, ctx.run_id, output)
        except psycopg.Error as exc:
            raise ctx.run_error(exc) from exc
        if outcome != "ok":
            raise ctx.abort(_RunAborted(f"{outcome.replace('_', ' ')} (finish_and_claim)"))
    except _RunAborted as lost:
        if lost.release:
            release(ctx, lost.reason)
        else:
            logger.info("workflow %s: %s; dropping this run", ctx.workflow_id,
                        lost.reason, extra=ctx.log_extra())
        return None
    return ""


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
        error = {"type": "UnknownWorkflow",
                 "message": f"no workflow named {ctx.name!r} is registered with the worker",
                 "traceback": None}
        status = _end_call(ctx, _queries.FAIL_RETRY_IN, (ctx.workflow_id, ctx.run_id,
                                                    dumps(error, "error"), 30.0))
        return "lost" if status is None else status or "failed"
    token = current_workflow.set(ctx)
    step_token = current_step.set(None)
    interrupted = False
    try:
        args, kwargs = decode_input(ctx.input)
        info = ExecutionInfo("workflow", ctx.name, ctx.workflow_id, ctx.run_id, ctx.attempt)
        logger.debug("running workflow %s (%s), attempt %d", ctx.workflow_id,
                     ctx.name, ctx.attempt, extra=extra)
        result = app._middleware.run(info, lambda: wf.fn(*args, **kwargs))
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
        if raised.release:
            release(ctx, raised.reason)
            return "released"
        logger.info("workflow %s: %s; dropping this run", ctx.workflow_id,
                    raised.reason, extra=extra)
        return "lost"
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
                    status = _finish_batched(ctx, output)
                else:
                    status = _end_call(ctx, _queries.FINISH, (ctx.workflow_id, ctx.run_id, output))
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
    status = _end_call(ctx, _queries.FAIL, (ctx.workflow_id, ctx.run_id,
                                       dumps(error, "the workflow error"),
                                       not isinstance(raised, NonDeterminismError), policy))
    if status is None:
        return "lost"
    logger.info("workflow %s failed (%s: %s) -> %s", ctx.workflow_id,
                error.get("type"), error.get("message"), status or "failed", extra=extra)
    return status or "failed"


# -- safe code changes ------------------------------------------------------------

PATCH_PREFIX = "patch:"


def patched(change_id: str) -> bool:
    """Whether this run takes the new code of change ``change_id``.

    Write a code change that must not disturb runs already in flight as::

        if ratchet.patched("charge-v2"):
            charge_v2(order)
        else:
            charge(order)

    A run that reaches this point under the new code gets True, and a marker
    step ``patch:<change_id>`` is recorded here. A run that started under the
    old code and had already recorded steps past this point gets False, so its
    replay takes the old branch and finds its recorded steps where they were:
    the marker is only looked for, never numbered, in old runs. Replays
    decide the same way (marker present: True; a later step recorded without
    it: False). Within one run, further calls with the same id return the
    first answer. Outside workflows (and inside steps) it returns True.
    """
    if not change_id:
        raise ValueError("patched() needs a non-empty change id")
    ctx = active_workflow()
    if ctx is None:
        return True
    ctx.check()
    if change_id in ctx.patches:
        return ctx.patches[change_id]
    marker = PATCH_PREFIX + change_id
    position = ctx.next_step
    rec = ctx.recorded.get(position)
    if rec is not None and rec.get("name") == marker:
        ctx.take_step()
        decision = True
    elif rec is not None or ctx.replaying_past(position - 1):
        # The old code went past this point without the marker: keep its
        # numbering and take the old branch.
        decision = False
    else:
        step_id = ctx.take_step()
        ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, marker,
                                   '{"patched": true}', None))
        decision = True
    ctx.patches[change_id] = decision
    return decision


def deprecate_patch(change_id: str) -> None:
    """Mark change ``change_id`` as complete, once no run that can take the old
    branch is left: replace ``if patched(id): new() else: old()`` by
    ``deprecate_patch(id); new()``. Runs that recorded the marker still replay
    (the marker's step number is consumed); new runs record nothing. Remove
    the call once those runs have ended too."""
    if not change_id:
        raise ValueError("deprecate_patch() needs a non-empty change id")
    ctx = active_workflow()
    if ctx is None:
        return
    ctx.check()
    rec = ctx.recorded.get(ctx.next_step)
    if rec is not None and rec.get("name") == PATCH_PREFIX + change_id:
        ctx.take_step()
    ctx.patches[change_id] = True


# -- durable sleep, messages, events ---------------------------------------------


def _wait_until(ctx: WorkflowContext, wake_at: Any, remaining: float) -> None:
    if remaining <= 0:
        return
    if remaining > ctx.app.suspend_threshold:
        ctx.suspend(wake_at)
    ctx.pause(remaining)


def sleep(seconds: float) -> None:
    """Sleep durably inside a workflow (plain ``time.sleep`` elsewhere).

    The wake-up time is recorded as a step from the database clock. A sleep
    longer than the app's ``suspend_threshold`` releases the worker: the
    workflow goes back to its queue until then and resumes on any worker, with
    only the remaining time left after a crash or restart.
    """
    ctx = active_workflow()
    if ctx is None:
        time.sleep(seconds)
        return
    step_id = ctx.take_step()
    rec = ctx.lookup(step_id, "sleep")
    if rec is not None and ctx.replaying_past(step_id):
        return
    row = ctx.call(_queries.DURABLE_SLEEP, (ctx.workflow_id, ctx.run_id, step_id, float(seconds)))
    assert row is not None
    _wait_until(ctx, row["wake_at"], float(row["remaining_seconds"] or 0.0))


def _deadline(ctx: WorkflowContext, step_id: int, rec: dict[str, Any] | None,
              seconds: float) -> Any:
    """A wait's deadline, recorded as a ``sleep`` step so it survives restarts."""
    if rec is not None:
        return (rec.get("output") or {})["wake_at"]
    row = ctx.call(_queries.DURABLE_SLEEP, (ctx.workflow_id, ctx.run_id, step_id, float(seconds)))
    assert row is not None
    return row["wake_at"]


def recv(topic: str | None = None, timeout: float = 60.0) -> Any:
    """Receive one message sent to this workflow (on ``topic``), or None after
    ``timeout`` seconds.

    Consuming the message and checkpointing it are one transaction: a message
    is delivered exactly once, across crashes. The timeout is durable. While
    waiting longer than the app's ``suspend_threshold`` the workflow releases
    its worker and wakes up when a message arrives.
    """
    ctx = _require("recv")
    app = ctx.app
    sleep_id = ctx.take_step()
    rec_sleep = ctx.lookup(sleep_id, "sleep")
    recv_id = ctx.take_step()
    rec = ctx.lookup(recv_id, "recv")
    if rec is not None:
        return rec.get("output")
    wake_at = _deadline(ctx, sleep_id, rec_sleep, timeout)
    started = time.monotonic()
    with app._listener.subscribe(MESSAGE, ctx.workflow_id) as sub:
        while True:
            row = ctx.call(_queries.RECV, (wake_at, ctx.workflow_id, ctx.run_id, recv_id, topic))
            assert row is not None
            if not row["missing"]:
                return row["message"]
            remaining = float(row["remaining"])
            if remaining <= 0:
                ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, recv_id, "recv",
                                           None, None))
                return None
            sub.wait(_wait_slice(ctx, started, remaining, wake_at, "message", topic))
            ctx.check()


def _wait_slice(ctx: WorkflowContext, started: float, remaining: float | None,
                wake_at: Any, wait_for: str, wait_key: str | None) -> float:
    """How long to wait in-process before checking again; suspends the run
    instead once it has waited ``suspend_threshold`` with more than that left."""
    app = ctx.app
    waited = time.monotonic() - started
    if remaining is None or remaining > app.suspend_threshold:
        if waited >= app.suspend_threshold:
            ctx.suspend(wake_at if wake_at is not None else "infinity", wait_for, wait_key)
        return min(app.poll_interval, app.suspend_threshold - waited)
    return min(app.poll_interval, remaining)


def set_event(key: str, value: Any) -> None:
    """Publish ``value`` under ``key`` for this workflow (checkpointed; the latest
    value wins). Anyone can read it with ``get_event(workflow_id, key)``."""
    ctx = _require("set_event")
    payload = dumps(value, f"the value of event {key!r}")
    step_id = ctx.take_step()
    if ctx.lookup(step_id, "set_event") is not None:
        return
    ctx.call(_queries.SET_EVENT, (ctx.workflow_id, ctx.run_id, step_id, key, payload))


def read_event(app: App, workflow_id: str, key: str, timeout: float | None) -> Any:
    """Read an event, waiting up to ``timeout`` seconds for it to be set
    (None: don't wait). Returns None if it is not set."""

    def check() -> tuple[bool, Any]:
        row = app._db.fetchone(_queries.GET_EVENT, (workflow_id, key))
        if row is None or row["missing"]:
            return False, None
        return True, row["value"]

    found, value = wait_for(app, EVENT, workflow_id, check, timeout)
    return value if found else None


def get_event(workflow_id: str, key: str, timeout: float | None = 60.0) -> Any:
    """Inside a workflow: read another workflow's event, waiting up to ``timeout``
    seconds for it to be set (None if it is not); the value read is
    checkpointed so a replay sees the same. Outside workflows use
    :meth:`ratchet.App.get_event`."""
    ctx = _require("get_event")
    step_id = ctx.take_step()
    rec = ctx.lookup(step_id, "get_event")
    if rec is not None:
        return rec.get("output")
    try:
        value = read_event(ctx.app, workflow_id, key, timeout)
    except psycopg.Error as exc:
        raise ctx.run_error(exc) from exc
    ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, "get_event",
                               dumps(value, "event value"), None))
    return value


def wait_for(app: App, channel: str, payload: str | None,
             check: Callable[[], tuple[bool, T]], timeout: float | None,
             stop: threading.Event | None = None) -> tuple[bool, T]:
    """Call ``check`` until it reports done or ``timeout`` passes, waking on a
    notification on ``channel`` (carrying ``payload``) or every poll interval."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with app._listener.subscribe(channel, payload) as sub:
        while True:
            done, value = check()
            if done:
                return done, value
            if deadline is None:
                return False, value
            left = deadline - time.monotonic()
            if left <= 0:
                return False, value
            sub.wait(min(left, app.poll_interval))
            if stop is not None and stop.is_set():
                return False, value


# -- child workflows and results ---------------------------------------------------


def start_child(ctx: WorkflowContext, name: str, params: dict[str, Any]) -> str:
    """Start a child workflow as a checkpointed step of the current run; its id
    defaults to ``<parent_id>:<step_id>`` so a replay never starts another."""
    step_id = ctx.take_step()
    step_name = f"start:{name}"
    rec = ctx.lookup(step_id, step_name)
    if rec is not None:
        return str((rec.get("output") or {})["child_id"])
    params = dict(params, parent_id=ctx.workflow_id, run_id=ctx.run_id, step_id=step_id,
                  step_name=step_name)
    if params.get("workflow_id") is None:
        params["workflow_id"] = f"{ctx.workflow_id}:{step_id}"
    row = ctx.call(_queries.START_CHILD, params)
    assert row is not None
    return str(row["workflow_id"])


def _raise_outcome(workflow_id: str, status: str, output: Any, error: Any) -> Any:
    if status == "succeeded":
        return output
    if status == "cancelled":
        raise WorkflowCancelled(workflow_id, error)
    raise WorkflowFailed(workflow_id, status, error)


def _outcome_payload(workflow_id: str, status: str, error: Any) -> dict[str, Any]:
    kind = "WorkflowCancelled" if status == "cancelled" else "WorkflowFailed"
    err = error or {}
    return {"type": kind, "message": f"workflow {workflow_id!r} {status}: "
            f"{err.get('type', '')}: {err.get('message', '')}",
            "child_id": workflow_id, "status": status, "error": error}


def _replay_result(rec: dict[str, Any], workflow_id: str) -> Any:
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
            wake_at = _deadline(ctx, sleep_id, rec_sleep, timeout)
    else:
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, "result")
    if rec is not None:
        return _replay_result(rec, workflow_id)
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
                    payload = _outcome_payload(workflow_id, status, row["error"])
                    ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, "result",
                                               None, dumps(payload, "child error")))
                return _raise_outcome(workflow_id, status, row["output"], row["error"])
            remaining = row["remaining"]
            if remaining is not None and remaining <= 0:
                msg = f"workflow {workflow_id!r} did not end within {timeout} s"
                ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, "result",
                                           None, dumps({"type": "TimeoutError",
                                                        "message": msg}, "error")))
                raise TimeoutError(msg)
            sub.wait(_wait_slice(ctx, started, remaining, wake_at, "child", workflow_id))
            ctx.check()


def workflow_result(app: App, workflow_id: str, timeout: float | None,
                    stop: threading.Event | None = None) -> Any:
    """Wait outside workflows (LISTEN ``ratchet.ended`` plus polling) and return
    the workflow's output, or raise its outcome."""

    def check() -> tuple[bool, Any]:
        row = app._db.fetchone(_queries.STATUS, (workflow_id,))
        assert row is not None
        return row["status"] in ENDED_STATUSES, row

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, row = wait_for(app, ENDED, workflow_id, check,
                             3600.0 if left is None else left, stop)
        if done:
            return _raise_outcome(workflow_id, row["status"], row["output"], row["error"])
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"workflow {workflow_id!r} did not end within {timeout} s "
                               f"(status {row['status']})")


def run_directly(app: App, workflow_id: str, worker_id: str, lease: float) -> Any:
    """Run a workflow in this process, durably: claim it whenever it is
    claimable (it may sleep, wait or be retried), until it ends. A worker may
    claim it first; then this just waits for the result."""

    def ended() -> tuple[bool, Any]:
        row = app._db.fetchone(_queries.STATUS, (workflow_id,))
        assert row is not None
        return row["status"] in ENDED_STATUSES, row

    while True:
        rows = app._db.fetchall(_queries.CLAIM_WORKFLOW, {
            "workflow_id": workflow_id, "worker_id": worker_id, "lease": lease,
            "app_version": app.app_version})
        for row in rows:
            ctx = context_from_claim(app, dict(row), worker_id, lease)
            if ctx is not None:
                run_workflow(ctx)
        done, status = wait_for(app, ENDED, workflow_id, ended, app.poll_interval)
        if done:
            return _raise_outcome(workflow_id, status["status"], status["output"],
                                  status["error"])


def nested_run(parent: WorkflowContext, workflow_id: str) -> None:
    """Run a child started by a direct call inside a workflow in this thread,
    under the parent's worker (whose heartbeat renews its lease too)."""
    try:
        rows = parent.app._db.fetchall(_queries.CLAIM_WORKFLOW, {
            "workflow_id": workflow_id, "worker_id": parent.worker_id, "lease": parent.lease,
            "app_version": parent.app.app_version})
    except psycopg.Error as exc:  # e.g. a lost connection: stops the parent's run, not fails it
        raise parent.run_error(exc) from exc
    for row in rows:
        ctx = context_from_claim(parent.app, dict(row), parent.worker_id, parent.lease)
        if ctx is not None:
            run_workflow(ctx)


def workflow_id() -> str | None:
    """The id of the workflow whose code is running (also inside its steps), or
    None outside workflows."""
    ctx = current_workflow.get()
    return None if ctx is None else ctx.workflow_id


def step_idempotency_key() -> str:
    """``"<workflow_id>:<step_id>"`` inside a step: stable across retries and
    replays, for passing to external APIs (payments, e-mail) as their
    idempotency key."""
    step = current_step.get()
    if step is None:
        raise RuntimeError("ratchet.step_idempotency_key() can only be called inside a step")
    return f"{step.workflow_id}:{step.step_id}"


__all__ = [
    "child_result",
    "deprecate_patch",
    "get_event",
    "patched",
    "recv",
    "run_workflow",
    "set_event",
    "sleep",
    "step_idempotency_key",
    "workflow_id",
    "workflow_result",
]

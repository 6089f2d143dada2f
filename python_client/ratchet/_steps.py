"""Steps: registering them, executing them checkpointed, replaying them.

A step called inside a workflow takes the next step number; if that number is
recorded, the recorded result is returned (or its error raised again) and the
function does not run. Otherwise it runs, is retried by its policy (the delay
is computed by the database), and its result or final error is recorded.
Outside workflows, and inside other steps, a step is plain code.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast

import psycopg

from . import _queries
from ._context import StepContext, WorkflowContext, active_workflow, current_step
from ._errors import StepTimeout, _ControlFlow, connection_lost, error_payload, step_error
from ._json import dumps
from ._middleware import ExecutionInfo

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("ratchet")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def retry_policy(retries: int, interval: float, backoff: float,
                 max_delay: float) -> dict[str, Any] | None:
    """The SQL retry policy (``ratchet.retry_delay``) for ``retries`` retries; None
    for none. The database computes every delay from it."""
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if not retries:
        return None
    return {"max_attempts": retries + 1, "initial_delay": interval,
            "backoff_factor": backoff, "max_delay": max_delay}


def replay_step(rec: dict[str, Any], step_id: int, name: str) -> Any:
    """A recorded step's result: its output, or its error raised again."""
    if rec.get("error") is not None:
        raise step_error(rec["error"], step_id, name)
    return rec.get("output")


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


class StepBase:
    """What every kind of step has: a name, a retry policy, and the checkpointed
    execution around one attempt (which each kind defines)."""

    def __init__(self, app: App, *, name: str, retries: int, backoff: float, interval: float,
                 max_delay: float) -> None:
        self.retry_policy = retry_policy(retries, interval, backoff, max_delay)
        self.app = app
        self.name = name
        self.retries = retries

    def _run_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run outside a workflow: just the function."""
        raise NotImplementedError

    def _attempt(self, ctx: WorkflowContext, step_id: int, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        """Execute once inside a workflow; a :class:`Checkpointed` result means the
        step recorded itself."""
        raise NotImplementedError

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run inside the current workflow (checkpointed, or replayed), or as
        plain code outside workflows and inside other steps."""
        ctx = active_workflow()
        if ctx is None:
            return self._run_plain(args, kwargs)
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, self.name)
        if rec is not None:
            return replay_step(rec, step_id, self.name)
        middleware = ctx.app._middleware
        if not middleware:
            return self._execute(ctx, step_id, args, kwargs)
        info = ExecutionInfo("step", self.name, ctx.workflow_id, ctx.run_id, ctx.attempt,
                             step_id)
        return middleware.run(info, lambda: self._execute(ctx, step_id, args, kwargs))

    def _execute(self, ctx: WorkflowContext, step_id: int, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        """Attempts until one succeeds or the policy gives up; records the outcome."""
        attempt = 0
        while True:
            attempt += 1
            token = current_step.set(StepContext(ctx.workflow_id, step_id, self.name, attempt))
            try:
                result = self._attempt(ctx, step_id, args, kwargs)
                if isinstance(result, Checkpointed):
                    return result.value
                output = dumps(result, f"the result of step {self.name!r}")
            except _ControlFlow:
                raise
            except Exception as exc:
                ctx.check()  # a failure caused by the run ending is not the step's
                delay = self._retry_delay(ctx, attempt)
                if delay is not None:
                    logger.info("step %s (#%d) of %s failed (%s: %s); retry %d/%d in "
                                "%.2f s", self.name, step_id, ctx.workflow_id,
                                type(exc).__name__, exc, attempt, self.retries, delay,
                                extra=ctx.log_extra(step_id))
                    ctx.pause(delay)
                    continue
                error = error_payload(exc)
                error["attempts"] = attempt
                ctx.record_step(step_id, self.name, None, dumps(error, "the step error"))
                raise step_error(error, step_id, self.name) from exc
            finally:
                current_step.reset(token)
            ctx.record_step(step_id, self.name, output, None)
            return json.loads(output)

    def _retry_delay(self, ctx: WorkflowContext, attempt: int) -> float | None:
        """Seconds before retrying after attempt ``attempt`` raised, from the
        policy, computed by the database; None when it is not retried."""
        if self.retry_policy is None:
            return None
        row = ctx.call(_queries.RETRY_DELAY,
                       (dumps(self.retry_policy, "the retry policy"), attempt))
        return None if row is None or row["delay"] is None else float(row["delay"])


class Step(StepBase, Generic[P, R]):
    """A function registered with :meth:`App.step`: checkpointed when a workflow
    calls it; a plain call anywhere else."""

    def __init__(self, app: App, fn: Callable[P, R], *, name: str, retries: int,
                 backoff: float, interval: float, max_delay: float,
                 timeout: float | None) -> None:
        super().__init__(app, name=name, retries=retries, backoff=backoff, interval=interval,
                         max_delay=max_delay)
        self.fn = fn
        self.timeout = timeout
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self._call(args, kwargs))

    def _run_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)

    def _attempt(self, ctx: WorkflowContext, step_id: int, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        return call_with_timeout(lambda: self.fn(*args, **kwargs), self.timeout, self.name)

    def __repr__(self) -> str:
        return f"<ratchet.Step {self.name!r}>"


class _UserFailure(Exception):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class Transaction(StepBase, Generic[P, R]):
    """A function registered with :meth:`App.transaction`: it receives a cursor,
    and its SQL commits in the same transaction as its checkpoint."""

    def __init__(self, app: App, fn: Callable[Concatenate[psycopg.Cursor[Any], P], R], *,
                 name: str, retries: int, backoff: float, interval: float,
                 max_delay: float) -> None:
        super().__init__(app, name=name, retries=retries, backoff=backoff, interval=interval,
                         max_delay=max_delay)
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self._call(args, kwargs))

    def _run_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self.app._db.connection() as conn, conn.transaction(), conn.cursor() as cur:
            return self.fn(cur, *args, **kwargs)

    def _attempt(self, ctx: WorkflowContext, step_id: int, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        try:
            with self.app._db.connection() as conn:
                with conn.transaction():
                    with conn.cursor() as cur:
                        try:
                            result = self.fn(cur, *args, **kwargs)
                            output = dumps(result, f"the result of step {self.name!r}")
                        except Exception as exc:
                            if connection_lost(exc):
                                raise  # not the step's failure: the run stops, see below
                            raise _UserFailure(exc) from exc
                    # The checkpoint, in the same transaction: RT002/RT006 here
                    # roll back everything the function did.
                    ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id,
                                                    self.name, output, None), conn=conn)
        except _UserFailure as failure:
            raise failure.exc from None
        except psycopg.Error as exc:
            # class 40 at COMMIT (serialization failure, deadlock): transient,
            # nothing committed; release like a lost connection (issue 14)
            if not connection_lost(exc) and not (exc.sqlstate or "").startswith("40"):
                raise
            # The connection died (terminated backend, server restart) in the
            # function or at COMMIT. Nothing, or all of it with its checkpoint,
            # was committed; either way the run stops and is released, and the
            # next run replays the step or runs it again. Never a step failure.
            raise ctx.run_error(exc) from exc
        return Checkpointed(json.loads(output))

    def __repr__(self) -> str:
        return f"<ratchet.Transaction {self.name!r}>"

"""The state of one run of a workflow, held in a context variable.

A run starts with a row from ``claim``: the workflow's name, input, its new
``run_id`` and the steps earlier runs recorded. Steps are numbered in call
order; a step whose number is recorded returns its recorded result instead of
running (replay). Every write names the ``run_id``; when the database says the
run is no longer current (RT002) or the workflow was cancelled (RT006) the run
stops at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import psycopg
from psycopg.rows import DictRow

from . import _queries
from ._errors import (
    AsyncNotSupported,
    NonDeterminismError,
    _ControlFlow,
    _RunAborted,
    _Suspended,
    describe_db_error,
    translate,
)

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("ratchet")


def decode_claim(row: dict[str, Any]) -> tuple[Any, dict[int, dict[str, Any]]]:
    """The input and the recorded steps (by step number) of a claimed row, whose
    ``input`` and ``steps`` may be JSON text or already decoded. Decoding errors
    (``ValueError``, ``RecursionError``...) propagate. No I/O."""
    steps = row.get("steps")
    if isinstance(steps, str):
        steps = json.loads(steps)
    value = row.get("input")
    if isinstance(value, str):
        value = json.loads(value)
    return value, {int(s["step_id"]): s for s in (steps or [])}


@dataclass
class StepContext:
    """The step being executed (not replayed) right now."""

    workflow_id: str
    step_id: int
    name: str
    attempt: int


_Run = TypeVar("_Run", bound="RunContext")


@dataclass
class RunContext:
    """One run of one workflow: what the sync and async clients share (step
    numbering, replay, ending the run; no I/O). :class:`WorkflowContext` adds
    the synchronous calls, ``ratchet.aio``'s context the awaitable ones."""

    app: Any
    workflow_id: str
    run_id: int
    name: str
    attempt: int
    worker_id: str
    lease: float
    recorded: dict[int, dict[str, Any]]
    #: the workflow's stored input
    input: Any = None
    next_step: int = 0
    #: set once the run has ended without finishing (suspended, stale, released)
    ended: _ControlFlow | None = None
    #: a non-determinism error: fails the run even if user code caught it
    fatal: NonDeterminismError | None = None
    #: set to interrupt in-process waits (the run was released or lost): a
    #: threading.Event, or an asyncio.Event in the async client
    stop: Any = None
    #: what ratchet.patched() decided for each change id in this run
    patches: dict[str, bool] = field(default_factory=dict)
    #: the worker's finish batcher (ratchet._batch), None: finish alone
    finisher: Any = None
    #: the worker's checkpoint batcher (ratchet._batch), None: one call per step
    checkpointer: Any = None
    #: time.monotonic() by which the lease expires (claim, then each heartbeat)
    lease_until: float = 0.0

    @classmethod
    def from_claim(cls: type[_Run], app: Any, row: dict[str, Any], worker_id: str,
                   lease: float) -> _Run:
        """A context for a row returned by ``claim``/``claim_workflow``.

        ``input`` and ``steps`` may be JSON text (what the worker's claim
        selects, see ``_queries.CLAIM``); decoding errors (``ValueError``,
        ``RecursionError``) propagate for the caller to fail this workflow alone.
        """
        value, recorded = decode_claim(row)
        return cls(app=app, workflow_id=row["workflow_id"], run_id=int(row["run_id"]),
                   name=row["name"], attempt=int(row.get("attempt") or 1),
                   worker_id=worker_id, lease=lease, recorded=recorded,
                   input=value, lease_until=time.monotonic() + lease)

    # -- step numbering and replay -------------------------------------------

    def take_step(self) -> int:
        """The next step number (and check that the run may go on)."""
        self.check()
        step_id = self.next_step
        self.next_step += 1
        return step_id

    def lookup(self, step_id: int, name: str) -> dict[str, Any] | None:
        """The recorded step at ``step_id``, or None. A recorded step of another
        name means the workflow is not deterministic: the run fails."""
        rec = self.recorded.get(step_id)
        if rec is not None and rec.get("name") != name:
            err = NonDeterminismError(
                f"workflow {self.workflow_id!r} ({self.name}) is not deterministic: "
                f"step #{step_id} was recorded as {rec.get('name')!r} but the code now "
                f"calls {name!r} at that position")
            self.fatal = err
            raise err
        return rec

    def replaying_past(self, step_id: int) -> bool:
        """Whether a later step than ``step_id`` is already recorded (so whatever
        ``step_id`` waited for is over)."""
        return any(k > step_id for k in self.recorded)

    # -- ending the run -------------------------------------------------------

    def check(self) -> None:
        """Raise if this run has already ended (user code may have swallowed the
        first signal) or was told to stop."""
        if self.ended is not None:
            raise self.ended
        if self.stop.is_set():
            raise self.abort(_RunAborted("the run was released"))

    def abort(self, signal: _ControlFlow) -> _ControlFlow:
        """Mark the run as ended by ``signal`` and interrupt its waits."""
        if self.ended is None:
            self.ended = signal
        self.stop.set()
        return self.ended

    # -- talking to the database ------------------------------------------------

    def run_error(self, exc: psycopg.Error) -> BaseException:
        """The exception to raise for a database error of one of Ratchet's own
        calls during this run.

        Only the user's code may fail a step or a workflow. An RT error that
        describes the user's data (RT005: an output over 1 MiB, say) becomes
        a :class:`RatchetError` the workflow sees; every other database error
        (a lost connection, a serialization failure, an admin shutdown, a
        duplicate prepared statement behind a pooler, RT007 misconfiguration)
        is Ratchet's plumbing: it is logged, the run stops and is released so
        another run (or this worker, later) goes on, and nothing is recorded.
        """
        state = exc.sqlstate
        if state == "RT002":
            return self.abort(_RunAborted(f"stale run (RT002): {describe_db_error(exc)}"))
        if state == "RT006":
            return self.abort(_RunAborted(f"cancelled (RT006): {describe_db_error(exc)}"))
        if state == "RT003":
            return self.abort(_RunAborted(
                f"duplicate step (RT003): {describe_db_error(exc)}", release=True))
        mapped = translate(exc) if state not in ("RT007", "RT009") else None
        if mapped is not None:
            return mapped
        logger.warning("ratchet: workflow %s: database error in Ratchet's own call "
                       "(%s, SQLSTATE %s): %s; releasing the run, nothing is recorded",
                       self.workflow_id, type(exc).__name__, state, describe_db_error(exc),
                       extra=self.log_extra())
        return self.abort(_RunAborted(f"database error ({type(exc).__name__}): {exc}",
                                      release=True, cause=exc))

    def log_extra(self, step_id: int | None = None) -> dict[str, Any]:
        """``extra=`` fields for log records about this run."""
        return {"workflow_id": self.workflow_id, "run_id": self.run_id, "step_id": step_id}


@dataclass
class WorkflowContext(RunContext):
    """One run of one workflow in the synchronous client."""

    app: App
    stop: threading.Event = field(default_factory=threading.Event)

    def pause(self, seconds: float) -> None:
        """Sleep in-process, waking early if the run is stopped."""
        if seconds > 0:
            self.stop.wait(seconds)
        self.check()

    def suspend(self, until: Any, wait_for: str | None = None,
                wait_key: str | None = None) -> NoReturn:
        """Release the workflow until ``until`` (or an earlier wake-up) and end
        this run: the database holds it as enqueued with its wake-up time."""
        self.call(_queries.SUSPEND, (self.workflow_id, self.run_id, until, wait_for, wait_key))
        logger.info("ratchet: workflow %s suspended until %s (wait_for=%s)",
                    self.workflow_id, until, wait_for,
                    extra={"workflow_id": self.workflow_id})
        raise self.abort(_Suspended(f"suspended until {until}"))

    def record_step(self, step_id: int, name: str, output: str | None,
                    error: str | None) -> None:
        """Checkpoint a step's output or error (JSON text): through the worker's
        checkpoint batcher when it has one (one commit for the steps of many
        runs), else one ``record_step`` call. Either way fenced on this run, and
        it returns only once the checkpoint is committed."""
        if self.checkpointer is None:
            self.call(_queries.RECORD_STEP, (self.workflow_id, self.run_id, step_id, name,
                                             output, error))
            return
        self.check()
        try:
            outcome = self.checkpointer.record(self.workflow_id, self.run_id, step_id, name,
                                               output, error, lambda: self.lease_until)
        except psycopg.Error as exc:
            raise self.run_error(exc) from exc
        if outcome != "ok":  # the outcomes of record_step's RT002/RT006/RT003/RT004
            raise self.abort(_RunAborted(f"{outcome.replace('_', ' ')} (record_steps)",
                                         release=outcome == "duplicate"))

    def call(self, query: str, params: Any,
             conn: psycopg.Connection[Any] | None = None) -> DictRow | None:
        """Run one statement for this run (on ``conn`` or a pooled connection) and
        return its first row."""
        self.check()
        try:
            if conn is not None:
                return self.app._db.run(conn, query, params).fetchone()
            # a lost connection is retried while the lease holds (fenced by run_id)
            row: DictRow | None = self.app._db.run_fenced(query, params, self.lease_until,
                                                          self.stop)
            return row
        except psycopg.Error as exc:
            raise self.run_error(exc) from exc


current_workflow: ContextVar[RunContext | None] = ContextVar(
    "ratchet_workflow", default=None)
current_step: ContextVar[StepContext | None] = ContextVar("ratchet_step", default=None)


def active_run() -> RunContext | None:
    """The run whose code is executing in this context (sync or async), unless
    we are inside a step (code inside a step is plain code: nothing in it is
    checkpointed)."""
    if current_step.get() is not None:
        return None
    return current_workflow.get()


def active_workflow() -> WorkflowContext | None:
    """The synchronous run whose code is executing in this context (see
    :func:`active_run`). Inside an ``async def`` workflow of
    :class:`ratchet.aio.AsyncApp` a synchronous wait or step would block the
    event loop and bypass its run: :class:`AsyncNotSupported` names the
    awaitable form instead."""
    ctx = active_run()
    if ctx is None or isinstance(ctx, WorkflowContext):
        return ctx
    raise AsyncNotSupported(
        f"workflow {ctx.workflow_id!r} ({ctx.name}) is an async workflow: call the "
        "awaitable API inside it. Hint: `await ratchet.aio.sleep(...)`, "
        "`await ratchet.aio.recv(...)`, steps registered with AsyncApp.step, "
        "`await app.start(...)`")


def require_workflow(what: str) -> WorkflowContext:
    """The active run, or RuntimeError naming ``ratchet.<what>()`` outside one."""
    ctx = active_workflow()
    if ctx is None:
        raise RuntimeError(f"ratchet.{what}() can only be called inside a workflow "
                           "(and not inside a step)")
    return ctx


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

"""Exceptions raised by the Ratchet client, and the JSON form of errors.

Errors the database raises carry a SQLSTATE of class ``RT``; :func:`translate`
turns them into the matching Python exception. Errors of user code are stored
as JSON objects ``{"type", "message", "traceback"}`` (:func:`error_payload`),
never pickled, so any language can read them.
"""

from __future__ import annotations

import traceback as _traceback
from typing import Any

import psycopg

__all__ = [
    "AsyncNotSupported",
    "DuplicateDedupKey",
    "InvalidArgument",
    "NonDeterminismError",
    "RatchetError",
    "SerializationError",
    "StaleRun",
    "StepError",
    "StepTimeout",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowArgumentError",
    "WorkflowNotFound",
]


class RatchetError(Exception):
    """Base class of every exception the Ratchet client raises."""


class SerializationError(RatchetError, TypeError):
    """A value that must be stored as JSON (an argument, a result, a message) is not
    JSON-serializable. Raised at the call site, before anything is written."""


class AsyncNotSupported(RatchetError, TypeError):
    """An ``async def`` function (or async generator) was given to a decorator of
    the synchronous API (:meth:`App.workflow`, :meth:`App.step`,
    :meth:`App.transaction`). Raised at decoration time: the sync client would
    otherwise run it, get a coroutine back and fail later in a worker."""


class WorkflowArgumentError(RatchetError, TypeError):
    """The arguments given to :meth:`App.start` (or a direct call of a workflow)
    do not fit the workflow function's signature. Raised at the call site,
    before anything is written."""


class NonDeterminismError(RatchetError):
    """A replayed workflow called a different step than the one recorded at that
    position: its code changed or depends on something other than its input and
    step results. The run is failed with this error; it cannot be caught away."""


class _StoredError:
    """Readers of a stored JSON error (``type``, ``message``, ``traceback``)."""

    error: dict[str, Any]

    def _field(self, key: str) -> str:
        value = (self.error or {}).get(key)
        return "" if value is None else str(value)

    @property
    def type(self) -> str:
        """Name of the exception type that was raised (e.g. ``"ValueError"``)."""
        return self._field("type")

    @property
    def message(self) -> str:
        """Message of the exception that was raised."""
        return self._field("message")

    @property
    def traceback(self) -> str:
        """Formatted traceback recorded with the error."""
        return self._field("traceback")


class StepError(_StoredError, RatchetError):
    """A step failed after its retries; raised inside the workflow, on the first run
    and on every replay alike.

    ``error`` is the stored JSON error; ``type`` keeps the original exception's
    type name (for example ``"ValueError"``), ``message`` its message. A step
    that timed out raises the subclass :class:`StepTimeout`.
    """

    def __init__(self, error: dict[str, Any], *, step_id: int | None = None,
                 step_name: str | None = None) -> None:
        self.error = error
        self.step_id = step_id
        self.step_name = step_name
        if step_id is None and step_name is None:
            text = self.message
        else:
            text = f"step {step_name!r} (#{step_id}) failed: {self.type}: {self.message}"
        super().__init__(text)


class StepTimeout(StepError, TimeoutError):
    """A step ran longer than its ``timeout``. It counts as a failure of the step
    (and is retried if the step has retries left); once its retries are spent
    the workflow gets this class (a :class:`StepError`, so ``except
    ratchet.StepError`` catches it too), on the first run and on replay.

    ``StepTimeout("message")`` is what the timed-out attempt raises; the
    workflow receives ``StepTimeout(error_dict, step_id=, step_name=)``.
    """

    def __init__(self, error: dict[str, Any] | str, *, step_id: int | None = None,
                 step_name: str | None = None) -> None:
        if isinstance(error, str):
            error = {"type": "ratchet.StepTimeout", "message": error}
        super().__init__(error, step_id=step_id, step_name=step_name)


def step_error(error: dict[str, Any], step_id: int, step_name: str) -> StepError:
    """The exception a workflow receives for a step recorded as failed: a
    :class:`StepTimeout` if the step timed out, else a :class:`StepError`."""
    cls = StepTimeout if error.get("type") == "ratchet.StepTimeout" else StepError
    return cls(error, step_id=step_id, step_name=step_name)


class WorkflowFailed(_StoredError, RatchetError):
    """The workflow ended ``failed`` (or ``dead``). ``error`` is the stored JSON
    error (``type``, ``message``, ``traceback``)."""

    def __init__(self, workflow_id: str, status: str, error: dict[str, Any] | None) -> None:
        self.workflow_id = workflow_id
        self.status = status
        self.error: dict[str, Any] = error or {}
        super().__init__(f"workflow {workflow_id!r} {status}: {self.type}: {self.message}")


class WorkflowCancelled(RatchetError):
    """The workflow was cancelled (or its deadline passed)."""

    def __init__(self, workflow_id: str, error: dict[str, Any] | None = None) -> None:
        self.workflow_id = workflow_id
        self.error: dict[str, Any] = error or {}
        super().__init__(f"workflow {workflow_id!r} was cancelled")


class WorkflowNotFound(RatchetError, LookupError):
    """No workflow has this id (SQLSTATE RT004)."""


class DuplicateDedupKey(RatchetError):
    """Another workflow with this ``dedup_key`` is still active on the queue
    (SQLSTATE RT001)."""


class InvalidArgument(RatchetError, ValueError):
    """The database rejected an argument: unknown queue, bad cron expression,
    negative priority... (SQLSTATE RT005)."""


class StaleRun(RatchetError):
    """A write named a run that is no longer current: the lease was lost and the
    workflow reclaimed (RT002), or it was cancelled (RT006)."""

    def __init__(self, message: str, sqlstate: str) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)


class _ControlFlow(BaseException):  # noqa: N818 - internal signal, not an error
    """Internal: ends the current run of a workflow without finishing it. A
    BaseException so that ``except Exception`` in user code cannot swallow it."""


class _Suspended(_ControlFlow):
    """Internal: the run suspended itself (durable sleep or wait); the database
    already holds the workflow as enqueued with its wake-up time."""


class _RunAborted(_ControlFlow):
    """Internal: this run must stop. ``release`` asks the runner to hand the
    workflow back (suspend until now) because its state is uncertain, e.g. the
    connection broke during a checkpoint."""

    def __init__(self, reason: str, *, release: bool = False,
                 cause: BaseException | None = None) -> None:
        self.reason = reason
        self.release = release
        self.cause = cause
        super().__init__(reason)


_SQLSTATE_CLASSES: dict[str, type[RatchetError]] = {
    "RT001": DuplicateDedupKey,
    "RT004": WorkflowNotFound,
    "RT005": InvalidArgument,
}


def connection_lost(exc: BaseException) -> bool:
    """Whether a database error means the connection itself is gone (server
    restart, terminated backend, network) rather than a failed statement."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    return state.startswith(("08", "57P"))


def describe_db_error(exc: psycopg.Error) -> str:
    """The primary message of a database error with its hint, on one line."""
    diag = exc.diag
    msg = diag.message_primary or str(exc).strip()
    if diag.message_hint:
        msg = f"{msg} (hint: {diag.message_hint})"
    return msg


def translate(exc: psycopg.Error) -> RatchetError | None:
    """The Ratchet exception for a database error with an ``RT`` SQLSTATE, or None."""
    state = exc.sqlstate
    if state is None or not state.startswith("RT"):
        return None
    if state in ("RT002", "RT006"):
        return StaleRun(describe_db_error(exc), state)
    cls = _SQLSTATE_CLASSES.get(state, RatchetError)
    return cls(describe_db_error(exc))


def type_name(exc: BaseException) -> str:
    """The exception's type as stored: ``ValueError``, or ``pkg.mod.Error``."""
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an exception: ``{"type", "message", "traceback"}``.

    A :class:`StepError` or :class:`WorkflowFailed` that reaches a workflow's
    top level keeps the original error's type and message, so the stored error
    names what really went wrong.
    """
    tb = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, StepError) and exc.step_id is not None:
        payload = dict(exc.error)
        payload.setdefault("traceback", _clip(tb, 32000, keep_end=True))
        payload["step_id"] = exc.step_id
        payload["step"] = exc.step_name
        return payload
    if isinstance(exc, WorkflowFailed) and exc.error:
        payload = dict(exc.error)
        payload["child_id"] = exc.workflow_id
        return payload
    return {"type": type_name(exc), "message": _clip(str(exc), 8000),
            "traceback": _clip(tb, 32000, keep_end=True)}


def _clip(text: str, limit: int, keep_end: bool = False) -> str:
    """Bound a stored string (payloads are capped at 1 MiB by the database)."""
    if len(text) <= limit:
        return text
    if keep_end:
        return "…" + text[-limit:]
    return text[:limit] + "…"

"""Workflows: the registered function, its start options, its arguments, and
what starting it sends.

``wf.with_options(queue="q")`` binds :class:`StartOptions` to a workflow,
keeping its signature, so ``app.start(wf.with_options(...), *args)`` is
type-checked like ``app.start(wf, *args)``. :func:`start_params` builds the
parameters of ``ratchet.start`` from a workflow (or a name), its arguments
and the options, without I/O; the app sends them
(:data:`ratchet._queries.START`), or :func:`start_child` does inside a
workflow, as a checkpointed step.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from . import _queries
from ._context import RunContext, WorkflowContext
from ._errors import WorkflowArgumentError
from ._json import dumps, encode_input
from ._steps import retry_policy

if TYPE_CHECKING:
    from ._app import App

P = ParamSpec("P")
R = TypeVar("R")

#: a duration: seconds, or a timedelta
Seconds = float | int | timedelta


def to_seconds(value: Seconds | None, what: str) -> float | None:
    """``value`` in seconds (None stays None); TypeError naming ``what`` otherwise."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be a number of seconds or a timedelta, not {value!r}")


def default_name(fn: Callable[..., Any]) -> str:
    """A function's registered name: its qualified name (``Class.method``), or
    just its name when it is defined inside another function."""
    name = str(getattr(fn, "__name__", repr(fn)))
    qualname = str(getattr(fn, "__qualname__", name))
    return name if "<locals>" in qualname else qualname


def bind_arguments(signature: inspect.Signature | None, name: str, args: Sequence[Any],
                   kwargs: dict[str, Any]) -> None:
    """Raise :class:`WorkflowArgumentError` unless ``args`` and ``kwargs`` bind to
    ``signature`` (that of workflow ``name``) as a call would; None: no check."""
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        plain = signature.replace(
            parameters=[p.replace(annotation=inspect.Parameter.empty)
                        for p in signature.parameters.values()],
            return_annotation=inspect.Signature.empty)
        raise WorkflowArgumentError(
            f"workflow {name!r} cannot be started with these arguments: {exc} "
            f"(it takes {name}{plain})") from None


@dataclass(frozen=True)
class StartOptions:
    """How to start a workflow; the defaults leave each choice to the workflow's
    registration (``@app.workflow(queue=..., timeout=..., max_attempts=...)``)
    or the database.

    ``workflow_id``: the idempotency key (starting an existing id returns that
    workflow; default: a new UUID, or ``<parent_id>:<step_id>`` for a child).
    ``queue``; ``priority`` (lower runs first); ``dedup_key`` (at most one
    active workflow per key and queue, else :class:`DuplicateDedupKey`);
    ``start_at`` (a datetime) or ``delay`` (seconds or a timedelta, on the
    database clock); ``timeout`` (seconds until it is cancelled);
    ``max_attempts``. Bind them with :meth:`Workflow.with_options`.
    """

    workflow_id: str | None = None
    queue: str | None = None
    priority: int = 0
    dedup_key: str | None = None
    start_at: datetime | None = None
    delay: Seconds | None = None
    timeout: Seconds | None = None
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        # a wrong type fails here, where the options are written
        to_seconds(self.delay, "delay")
        to_seconds(self.timeout, "timeout")


#: the keyword arguments of :meth:`App.start` that are start options (the
#: untyped form kept for compatibility; :meth:`Workflow.with_options` is typed)
START_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(StartOptions))


class _Unchanged:
    def __repr__(self) -> str:
        return "<unchanged>"


#: a with_options() keyword that was not given
_UNCHANGED: Any = _Unchanged()


class _Startable(Generic[P, R]):
    """What a workflow and a workflow with options have in common."""

    def _bound(self) -> tuple[WorkflowDefinition[P, R], StartOptions]:
        raise NotImplementedError

    def with_options(self, options: StartOptions | None = None, /, *,
                     workflow_id: str | None = _UNCHANGED, queue: str | None = _UNCHANGED,
                     priority: int = _UNCHANGED, dedup_key: str | None = _UNCHANGED,
                     start_at: datetime | None = _UNCHANGED, delay: Seconds | None = _UNCHANGED,
                     timeout: Seconds | None = _UNCHANGED,
                     max_attempts: int | None = _UNCHANGED) -> BoundWorkflow[P, R]:
        """This workflow with start options (see :class:`StartOptions`), for
        ``app.start(wf.with_options(queue="q"), *args, **kwargs)``: the
        arguments are type-checked against the workflow's signature, and every
        keyword argument is the workflow's. ``options`` replaces the options
        bound so far; the keywords given then override single fields. Calling
        the result runs it like calling the workflow, with these options."""
        workflow, base = self._bound()
        given: dict[str, Any] = {"workflow_id": workflow_id, "queue": queue,
                                 "priority": priority, "dedup_key": dedup_key,
                                 "start_at": start_at, "delay": delay, "timeout": timeout,
                                 "max_attempts": max_attempts}
        changed = {k: v for k, v in given.items() if v is not _UNCHANGED}
        return BoundWorkflow(workflow, dataclasses.replace(
            base if options is None else options, **changed))


class WorkflowDefinition(_Startable[P, R]):
    """A registered workflow function with its registration options: what the
    sync :class:`Workflow` and the async ``ratchet.aio.AsyncWorkflow`` share
    (starting, argument checks, options); each adds its own way of calling."""

    def __init__(self, app: Any, fn: Callable[P, Any], *, name: str, queue: str,
                 max_attempts: int | None, timeout: float | None, retries: int,
                 retry_interval: float, retry_backoff: float, retry_max_delay: float) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.retry_policy = retry_policy(retries, retry_interval, retry_backoff, retry_max_delay)
        # one knob: retries=n is max_attempts=n+1 (errors and lost leases alike)
        self.max_attempts = max_attempts if max_attempts is not None else \
            (retries + 1 if retries else None)
        self.timeout = timeout
        self.retries = retries
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have no signature
            self._signature = None
        functools.update_wrapper(cast(Any, self), fn)

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise :class:`WorkflowArgumentError` unless ``args`` and ``kwargs`` bind
        to the workflow function's signature (as a call would)."""
        bind_arguments(self._signature, self.name, args, kwargs)

    def _bound(self) -> tuple[WorkflowDefinition[P, R], StartOptions]:
        return self, StartOptions()

    def __repr__(self) -> str:
        return f"<ratchet.{type(self).__name__} {self.name!r} queue={self.queue!r}>"


class Workflow(WorkflowDefinition[P, R]):
    """A function registered with :meth:`App.workflow`.

    Start it with :meth:`App.start` (from anywhere; a worker runs it), or call
    it: outside a workflow the call starts it with a generated id and runs it
    durably in this process, returning its result; inside a workflow the call
    starts it as a child workflow (a checkpointed step) and waits for it.
    """

    app: App
    fn: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self.app._call_directly(self, args, kwargs))


class BoundWorkflow(_Startable[P, R]):
    """A workflow with :class:`StartOptions` (from :meth:`Workflow.with_options`):
    give it to :meth:`App.start`, or call it like the workflow."""

    def __init__(self, workflow: WorkflowDefinition[P, R], options: StartOptions) -> None:
        self.workflow = workflow
        self.options = options

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self.workflow.app._call_directly(self, args, kwargs))

    def _bound(self) -> tuple[WorkflowDefinition[P, R], StartOptions]:
        return self.workflow, self.options

    def __repr__(self) -> str:
        return f"<ratchet.BoundWorkflow {self.workflow.name!r} {self.options}>"


def start_params(fn: WorkflowDefinition[..., Any] | BoundWorkflow[..., Any] | str,
                 args: Sequence[Any],
                 kwargs: dict[str, Any], options: StartOptions | None = None, *,
                 app_version: str | None) -> dict[str, Any]:
    """The parameters of :data:`ratchet._queries.START` for starting ``fn`` (a
    workflow, whose arguments are checked and whose registration defaults
    apply; a workflow with options, which then override ``options``; or a
    name) with ``args`` and ``kwargs``: validated and JSON-encoded, no I/O.
    ``workflow_id`` stays None when not given (the caller picks one)."""
    if isinstance(fn, BoundWorkflow):
        options = fn.options
        fn = fn.workflow
    opts = StartOptions() if options is None else options
    queue, max_attempts, timeout = opts.queue, opts.max_attempts, opts.timeout
    policy = None
    if isinstance(fn, WorkflowDefinition):
        fn.check_arguments(args, kwargs)
        name = fn.name
        policy = fn.retry_policy
        queue = queue or fn.queue
        max_attempts = max_attempts if max_attempts is not None else fn.max_attempts
        timeout_s = to_seconds(timeout, "timeout") if timeout is not None else fn.timeout
    elif isinstance(fn, str):
        name = fn
        timeout_s = to_seconds(timeout, "timeout")
    else:
        raise TypeError(f"start() needs a workflow registered with @app.workflow() or a "
                        f"workflow name, not {fn!r}")
    return {
        "name": name, "input": encode_input(args, kwargs, f"the input of workflow {name!r}"),
        "workflow_id": opts.workflow_id, "queue": queue or "default", "priority": opts.priority,
        "dedup_key": opts.dedup_key, "start_at": opts.start_at,
        "delay": to_seconds(opts.delay, "delay"),
        "timeout": timeout_s, "max_attempts": max_attempts, "parent_id": None,
        "retry_policy": None if policy is None else dumps(policy, "the retry policy"),
        "app_version": app_version,
        "trace_context": None,
    }


#: what :meth:`App.start_many` takes per workflow: ``(wf, args)`` or
#: ``(wf, args, kwargs)``, ``wf`` a workflow, a workflow with options, or a name
StartItem = tuple[Any, Sequence[Any]] | tuple[Any, Sequence[Any], dict[str, Any]]


def start_items(items: Sequence[StartItem], *, app_version: str | None) -> str:
    """The JSON argument of ``ratchet.start_workflows(items)`` for
    :meth:`App.start_many`: each item validated and encoded by
    :func:`start_params` (ids chosen here, so a resent call is idempotent).
    No I/O."""
    out = []
    for item in items:
        fn, args = item[0], item[1]
        kwargs = item[2] if len(item) > 2 else {}
        params = start_params(fn, list(args), dict(kwargs), app_version=app_version)
        start_at = params["start_at"]
        entry = {
            "name": params["name"], "input": json.loads(params["input"]),
            "workflow_id": params["workflow_id"] or str(uuid.uuid4()),
            "queue": params["queue"], "priority": params["priority"],
            "dedup_key": params["dedup_key"],
            "start_at": None if start_at is None else start_at.isoformat(),
            "delay": params["delay"], "timeout": params["timeout"],
            "max_attempts": params["max_attempts"], "app_version": params["app_version"],
            "retry_policy": None if params["retry_policy"] is None
            else json.loads(params["retry_policy"])}
        if entry["start_at"] is None:
            del entry["start_at"]  # start_at and delay exclude each other
        if entry["delay"] is None:
            del entry["delay"]
        out.append(entry)
    return dumps(out, "the workflows to start")


def child_start(ctx: RunContext, params: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The id of the child this step already started (a replay), or None and
    the parameters of :data:`ratchet._queries.START_CHILD` for the next step
    number; the child's id defaults to ``<parent_id>:<step_id>`` so a replay
    never starts another. Takes the step number; no I/O."""
    name = params["name"]
    step_id = ctx.take_step()
    step_name = f"start:{name}"
    rec = ctx.lookup(step_id, step_name)
    if rec is not None:
        return str((rec.get("output") or {})["child_id"]), params
    params = dict(params, parent_id=ctx.workflow_id, run_id=ctx.run_id, step_id=step_id,
                  step_name=step_name)
    if params.get("workflow_id") is None:
        params["workflow_id"] = f"{ctx.workflow_id}:{step_id}"
    return None, params


def start_child(ctx: WorkflowContext, params: dict[str, Any]) -> str:
    """Start a child workflow as a checkpointed step of the current run."""
    found, params = child_start(ctx, params)
    if found is not None:
        return found
    row = ctx.call(_queries.START_CHILD, params)
    assert row is not None
    return str(row["workflow_id"])

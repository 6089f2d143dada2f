"""The application object: configuration, decorators, starting and managing
workflows, reading records, workers."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

import psycopg

from . import _queries, _records
from ._context import active_workflow
from ._db import Database
from ._errors import AsyncNotSupported, connection_lost
from ._handles import WorkflowHandle
from ._json import dumps
from ._middleware import Middleware, MiddlewareChain
from ._outcome import child_result
from ._records import (
    QueueInfo,
    QueueMetrics,
    ScheduleInfo,
    StepInfo,
    WorkerInfo,
    WorkflowInfo,
    WorkflowStatus,
)
from ._runs import heartbeat_loop, nested_run, run_directly
from ._settings import AppSettings
from ._steps import Step, Transaction
from ._waits import get_event as get_event_in_workflow
from ._waits import read_event
from ._workflows import (
    START_OPTION_NAMES,
    BoundWorkflow,
    Seconds,
    StartItem,
    StartOptions,
    Workflow,
    default_name,
    start_child,
    start_items,
    start_params,
    to_seconds,
)

if TYPE_CHECKING:
    from ._worker import Worker

logger = logging.getLogger("ratchet")

P = ParamSpec("P")
R = TypeVar("R")


def make_worker_id(kind: str = "") -> str:
    """``host:pid:xxxxxxxx``: unique per worker, readable in ``ratchet ls``."""
    suffix = uuid.uuid4().hex[:8]
    return f"{socket.gethostname()}:{os.getpid()}:{kind}{suffix}"


def _reject_async(fn: Callable[..., Any], decorator: str) -> None:
    """Raise :class:`AsyncNotSupported` for an ``async def`` function (or async
    generator) given to a decorator of the synchronous API."""
    target = getattr(fn, "__func__", fn)
    call = None if inspect.isfunction(target) else type(target).__dict__.get("__call__")
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target) or \
            (call is not None and inspect.iscoroutinefunction(call)):
        name = getattr(fn, "__qualname__", repr(fn))
        raise AsyncNotSupported(
            f"@app.{decorator}() got the async function {name!r}, but ratchet.App runs "
            "workflows and steps synchronously (it would only get a coroutine back). "
            f"Hint: define {name} with a plain `def` (call async libraries inside it "
            "with asyncio.run(...)), or use an async client when one is available.")


# -- the app ---------------------------------------------------------------------


class _LocalRunner:
    """The worker identity of workflows run by direct calls in this process, with
    a heartbeat thread while any of them runs."""

    lease = 30.0

    def __init__(self, app: App) -> None:
        self.app = app
        self.worker_id = make_worker_id("local-")
        self._active = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def running(self) -> Iterator[str]:
        with self._lock:
            self._active += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name="ratchet-local-heartbeat")
                self._thread.start()
        try:
            yield self.worker_id
        finally:
            with self._lock:
                self._active -= 1
            self._wake.set()

    def _beat(self) -> None:
        # renews every run of this app's in-process worker id (direct calls)
        heartbeat_loop(self.app, self.worker_id, self.lease, self._idle,
                                lambda: None)

    def _idle(self, interval: float) -> bool:
        """Wait up to ``interval`` (or until a run ends); True, and the thread is
        forgotten, once no direct call is running."""
        self._wake.wait(interval)
        self._wake.clear()
        with self._lock:
            if self._active == 0:
                self._thread = None
                return True
        return False


class App(AppSettings):
    """A Ratchet application: registered workflows and steps, and a connection pool.

    ``dsn`` is a libpq connection string or URL; without it,
    ``RATCHET_DATABASE_URL``, then ``DATABASE_URL``, then libpq's ``PG*``
    environment variables are used. The pool opens on first use; a worker
    grows it to its concurrency plus two. ``suspend_threshold`` (seconds) is
    the longest wait (sleep, receive, child result) a workflow spends holding
    its worker before it suspends and releases it.

    Pooler-safe by default (docs/deployment.md, "Poolers"): no prepared
    statements unless ``prepared_statements=True`` (faster on a direct
    connection or a session pooler). Wake-ups LISTEN on ``listen_dsn``
    (else ``RATCHET_LISTEN_DSN``), a direct connection that bypasses the
    pooler; without one they LISTEN on ``dsn`` itself, unless ``pooled=True``
    (or ``RATCHET_POOLED=1``) says ``dsn`` is a transaction pooler: then nothing
    LISTENs and every wait polls, every ``POOLED_POLL_INTERVAL`` seconds unless
    ``poll_interval`` is given.
    ``app_version`` (default: ``RATCHET_APP_VERSION``) is recorded on the
    workflows this app starts and the runs its workers claim.
    """

    def __init__(self, dsn: str | None = None, *, pool_size: int | None = None,
                 suspend_threshold: float = 2.0, poll_interval: float | None = None,
                 prepared_statements: bool = False, listen_dsn: str | None = None,
                 pooled: bool | None = None, app_version: str | None = None,
                 tracing: Any = None) -> None:
        self._db: Database
        self._configure(Database(dsn, pool_size=pool_size,
                                 prepared_statements=prepared_statements),
                        suspend_threshold=suspend_threshold, poll_interval=poll_interval,
                        listen_dsn=listen_dsn, pooled=pooled, app_version=app_version)
        self._middleware = MiddlewareChain()
        from ._otel import tracing_for

        #: OpenTelemetry spans: ``tracing=True``, or a TracerProvider to use;
        #: None (default): on when a tracer provider is configured; False: off.
        #: See ``ratchet._otel`` and docs/observability.md.
        self._tracing = tracing_for(tracing, self._db)
        if self._tracing is not None:
            self._middleware.add(self._tracing.middleware)
        self._workflows: dict[str, Workflow[..., Any]] = {}
        self._local: _LocalRunner | None = None

    def __repr__(self) -> str:
        return f"<ratchet.App workflows={sorted(self._workflows)}>"

    # -- configuration -------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Wrap every workflow run and step execution in ``middleware``: either
        ``fn(info, call_next)`` returning ``call_next()``'s result, or
        ``fn(info)`` returning a context manager. See :class:`ExecutionInfo`."""
        self._middleware.add(middleware)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a connection of the app's pool (autocommit mode)."""
        with self._db.connection() as conn:
            yield conn

    def close(self) -> None:
        """Close the pool and the notification listener."""
        self._listener.close()
        self._db.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workflows(self) -> dict[str, Workflow[..., Any]]:
        """The registered workflows by name."""
        return dict(self._workflows)

    # -- decorators ----------------------------------------------------------

    @overload
    def workflow(self, fn: Callable[P, R], /) -> Workflow[P, R]: ...

    @overload
    def workflow(self, /, *, name: str | None = None, queue: str = "default",
                 max_attempts: int | None = None, timeout: Seconds | None = None,
                 retries: int = 0, retry_interval: float = 1.0, retry_backoff: float = 2.0,
                 retry_max_delay: float = 300.0,
                 ) -> Callable[[Callable[P, R]], Workflow[P, R]]: ...

    def workflow(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
                 queue: str = "default", max_attempts: int | None = None,
                 timeout: Seconds | None = None, retries: int = 0,
                 retry_interval: float = 1.0, retry_backoff: float = 2.0,
                 retry_max_delay: float = 300.0) -> Any:
        """Register a workflow.

        ``name`` defaults to the function's qualified name; it is what the
        database stores and workers look up. ``queue``: where it runs unless
        :meth:`start` says otherwise. ``max_attempts``: claims allowed (runs and
        crash recoveries) before it is ``dead``. ``timeout``: a deadline after
        which it is cancelled. ``retries``: how many times a run that raised is
        retried, i.e. ``max_attempts = retries + 1`` unless ``max_attempts`` is
        given; the database schedules each retry (``retry_interval *
        retry_backoff**n`` seconds, capped by ``retry_max_delay``) from the
        policy stored with the workflow. Without, an exception fails it.
        """
        timeout_s = to_seconds(timeout, "timeout")

        def register(func: Callable[P, R]) -> Workflow[P, R]:
            _reject_async(func, "workflow")
            wf_name = name or default_name(func)
            if wf_name in self._workflows:
                raise ValueError(f"a workflow named {wf_name!r} is already registered")
            wf: Workflow[P, R] = Workflow(
                self, func, name=wf_name, queue=queue, max_attempts=max_attempts,
                timeout=timeout_s, retries=retries, retry_interval=retry_interval,
                retry_backoff=retry_backoff, retry_max_delay=retry_max_delay)
            self._workflows[wf_name] = wf
            return wf

        return register if fn is None else register(fn)

    @overload
    def step(self, fn: Callable[P, R], /) -> Step[P, R]: ...

    @overload
    def step(self, /, *, retries: int = 0, backoff: float = 2.0, interval: float = 1.0,
             max_delay: float = 60.0, timeout: float | None = None, name: str | None = None,
             ) -> Callable[[Callable[P, R]], Step[P, R]]: ...

    def step(self, fn: Callable[..., Any] | None = None, /, *, retries: int = 0,
             backoff: float = 2.0, interval: float = 1.0, max_delay: float = 60.0,
             timeout: float | None = None, name: str | None = None) -> Any:
        """Register a step: its result (JSON) is checkpointed when a workflow calls
        it, and a replay returns the recorded result instead of running it again.

        A step that raises is retried ``retries`` times, after ``interval``,
        ``interval * backoff``, ... seconds (capped by ``max_delay``); then the
        error is recorded and raised in the workflow as :class:`StepError`.
        With ``timeout`` the step runs in a helper thread and raises
        :class:`StepTimeout` if it takes longer. A step calling the outside
        world is at-least-once: pass :func:`step_idempotency_key` along.
        """

        def register(func: Callable[P, R]) -> Step[P, R]:
            _reject_async(func, "step")
            return Step(self, func, name=name or default_name(func), retries=retries,
                        backoff=backoff, interval=interval, max_delay=max_delay,
                        timeout=timeout)

        return register if fn is None else register(fn)

    @overload
    def transaction(self, fn: Callable[Concatenate[psycopg.Cursor[Any], P], R], /,
                    ) -> Transaction[P, R]: ...

    @overload
    def transaction(self, /, *, name: str | None = None, retries: int = 0,
                    backoff: float = 2.0, interval: float = 1.0, max_delay: float = 60.0,
                    ) -> Callable[[Callable[Concatenate[psycopg.Cursor[Any], P], R]],
                                  Transaction[P, R]]: ...

    def transaction(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
                    retries: int = 0, backoff: float = 2.0, interval: float = 1.0,
                    max_delay: float = 60.0) -> Any:
        """Register a transactional step: the function receives a psycopg cursor
        first, and its SQL commits in one transaction with the step's checkpoint,
        so its database effects happen exactly once. If the run lost its lease
        or the workflow was cancelled, the transaction rolls back. The function
        must use the cursor it is given (the app's database) and should not
        commit."""

        def register(func: Callable[Concatenate[psycopg.Cursor[Any], P], R]
                     ) -> Transaction[P, R]:
            _reject_async(func, "transaction")
            return Transaction(self, func, name=name or default_name(func), retries=retries,
                               backoff=backoff, interval=interval, max_delay=max_delay)

        return register if fn is None else register(fn)

    # -- starting ------------------------------------------------------------

    @overload
    def start(self, fn: Workflow[P, R] | BoundWorkflow[P, R], /, *args: P.args,
              **kwargs: P.kwargs) -> WorkflowHandle[R]: ...

    @overload
    def start(self, fn: str, /, *args: Any, **kwargs: Any) -> WorkflowHandle[Any]: ...

    def start(self, fn: Workflow[..., Any] | BoundWorkflow[..., Any] | str, /, *args: Any,
              **kwargs: Any) -> WorkflowHandle[Any]:
        """Start a workflow and return a handle to it.

        ``fn`` is a registered workflow (arguments are checked against its
        signature, statically and here), the same with start options,
        ``wf.with_options(queue="q", priority=5)`` (see :class:`StartOptions`:
        ``workflow_id``, ``queue``, ``priority``, ``dedup_key``, ``start_at``,
        ``delay``, ``timeout``, ``max_attempts``), or a workflow name (to start
        one whose code lives elsewhere). The arguments are the workflow's
        input and must be JSON-serializable (else :class:`SerializationError`,
        raised here).

        For compatibility the options may also be given as keywords,
        ``app.start(wf, 42, workflow_id="order-42")`` (the form for a
        workflow name); type checkers flag that form for a workflow: prefer
        ``with_options``, where every keyword is the workflow's.

        Inside a workflow this is a checkpointed step: the child's id defaults to
        ``<parent_id>:<step_id>``, so a replay never starts it twice.
        """
        options = None
        if not isinstance(fn, BoundWorkflow):
            given = {k: kwargs.pop(k) for k in START_OPTION_NAMES if k in kwargs}
            options = StartOptions(**given) if given else None
        return WorkflowHandle(self, self._start(fn, args, kwargs, options))

    def _start(self, fn: Workflow[..., Any] | BoundWorkflow[..., Any] | str,
               args: Sequence[Any], kwargs: dict[str, Any],
               options: StartOptions | None = None) -> str:
        params = start_params(fn, args, kwargs, options, app_version=self.app_version)
        workflow_id = params["workflow_id"]
        name = params["name"]
        ctx = active_workflow()
        if ctx is not None:
            if self._tracing is not None:
                carrier = self._tracing.carrier()
                params["trace_context"] = None if carrier is None else dumps(carrier, "trace")
            return start_child(ctx, params)
        # The id is chosen here, not by the server, so that a start whose reply
        # was lost with its connection can be sent again: the id is the
        # idempotency key, and the second call returns the first workflow.
        params["workflow_id"] = workflow_id or str(uuid.uuid4())
        with (self._tracing.start(name, params) if self._tracing is not None
              else contextlib.nullcontext()):
            try:
                row = self._db.fetchone(_queries.START, params)
            except psycopg.Error as exc:
                if not connection_lost(exc):
                    raise
                row = self._db.fetchone(_queries.START, params)
        assert row is not None
        return str(row["workflow_id"])

    def start_many(self, items: Sequence[StartItem]) -> list[WorkflowHandle[Any]]:
        """Start many workflows in one call and one commit
        (``ratchet.start_workflows``): ``[(wf, args), (wf, args, kwargs), ...]``
        where ``wf`` is a workflow, a workflow with options
        (``wf.with_options(workflow_id=..., priority=..., delay=...)``) or a name.
        Every item is checked first (arguments, JSON); a bad item in the
        database (RT005, an active dedup key) starts none. Returns handles in
        item order. Not inside a workflow (start children one by one there)."""
        if active_workflow() is not None:
            raise RuntimeError("start_many() cannot be called inside a workflow; "
                               "start child workflows with app.start()")
        body = start_items(items, app_version=self.app_version)
        row = self._db.fetchone(_queries.START_MANY, (body,))
        assert row is not None
        return [WorkflowHandle(self, str(i)) for i in row["workflow_ids"]]

    def _call_directly(self, wf: Workflow[..., Any] | BoundWorkflow[..., Any],
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ctx = active_workflow()
        if ctx is not None:
            child_id = self._start(wf, args, kwargs)
            if ctx.next_step not in ctx.recorded:
                nested_run(ctx, child_id)
            return child_result(ctx, child_id, None)
        workflow_id = self._start(wf, args, kwargs)
        if self._local is None:
            self._local = _LocalRunner(self)
        with self._local.running() as worker_id:
            return run_directly(self, workflow_id, worker_id, self._local.lease)

    def retrieve(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle to an existing workflow (:class:`WorkflowNotFound` if none)."""
        handle: WorkflowHandle[Any] = WorkflowHandle(self, workflow_id)
        handle.info()
        return handle

    # -- messages and events ---------------------------------------------------

    def send(self, destination_id: str, message: Any, topic: str | None = None,
             idempotency_key: str | None = None) -> int:
        """Send ``message`` (JSON) to workflow ``destination_id``; it is received
        with :func:`ratchet.recv`. A retry with the same ``idempotency_key``
        delivers once. Inside a workflow the send is a checkpointed step (the
        key defaults to ``<workflow_id>:<step_id>``). Returns the message id."""
        body = dumps(message, "the message")
        ctx = active_workflow()
        if ctx is None:
            row = self._db.fetchone(_queries.SEND, (destination_id, body, topic, idempotency_key))
            assert row is not None
            return int(row["message_id"])
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, "send")
        if rec is not None:
            return int((rec.get("output") or {}).get("message_id") or 0)
        row = ctx.call(_queries.SEND_STEP, {
            "destination_id": destination_id, "message": body, "topic": topic,
            "idempotency_key": idempotency_key or f"{ctx.workflow_id}:{step_id}",
            "workflow_id": ctx.workflow_id, "run_id": ctx.run_id, "step_id": step_id})
        assert row is not None
        return int(row["message_id"])

    def get_event(self, workflow_id: str, key: str, timeout: float | None = None) -> Any:
        """The latest value workflow ``workflow_id`` set for ``key`` with
        :func:`ratchet.set_event`; waits up to ``timeout`` seconds for it to be
        set (None: don't wait) and returns None if it is not. Inside a workflow
        the value read is checkpointed."""
        if active_workflow() is not None:
            return get_event_in_workflow(workflow_id, key, timeout)
        return read_event(self, workflow_id, key, timeout)

    # -- managing ------------------------------------------------------------

    def cancel(self, workflow_id: str) -> int:
        """Cancel a workflow and its live children; returns how many."""
        row = self._db.fetchone(_queries.CANCEL, (workflow_id,))
        return int(row["cancelled"] or 0) if row else 0

    def resume(self, workflow_id: str) -> None:
        """Put a failed, cancelled or dead workflow back in its queue."""
        self._db.fetchone(_queries.RESUME, (workflow_id,))

    def fork(self, workflow_id: str, from_step: int,
             new_workflow_id: str | None = None) -> WorkflowHandle[Any]:
        """A new workflow with the same input and the checkpoints of steps before
        ``from_step`` copied: it re-runs from there."""
        row = self._db.fetchone(_queries.FORK, (workflow_id, from_step, new_workflow_id))
        assert row is not None
        return WorkflowHandle(self, str(row["workflow_id"]))

    def create_queue(self, name: str, *, concurrency: int | None = None,
                     worker_concurrency: int | None = None, rate_limit: int | None = None,
                     rate_period: Seconds | None = None) -> None:
        """Create (or reconfigure) a queue: at most ``concurrency`` running
        workflows in total, ``worker_concurrency`` per worker, and ``rate_limit``
        starts per ``rate_period`` seconds."""
        self._db.fetchone(
            _queries.CREATE_QUEUE,
            (name, concurrency, worker_concurrency, rate_limit,
             to_seconds(rate_period, "rate_period")))

    def pause_queue(self, name: str) -> None:
        """Stop workers from claiming on queue ``name``."""
        self._db.fetchone(_queries.PAUSE_QUEUE, (name,))

    def resume_queue(self, name: str) -> None:
        """Let workers claim on queue ``name`` again."""
        self._db.fetchone(_queries.RESUME_QUEUE, (name,))

    def schedule(self, name: str, cron: str, workflow: Workflow[..., Any] | str,
                 input: Any = None, *, queue: str | None = None,
                 timezone: str = "UTC") -> None:
        """Start ``workflow`` on a 5-field ``cron`` schedule (evaluated in SQL by
        ``tick()``, which workers call). ``input`` is the workflow's JSON input
        (a dict becomes keyword arguments)."""
        wf_name = workflow.name if isinstance(workflow, Workflow) else workflow
        if queue is None:
            queue = workflow.queue if isinstance(workflow, Workflow) else "default"
        self._db.fetchone(
            _queries.SCHEDULE,
            (name, cron, wf_name, dumps({} if input is None else input, "the input"),
             queue, timezone))

    def unschedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""
        row = self._db.fetchone(_queries.UNSCHEDULE, (name,))
        return bool(row and row["removed"])

    # -- reading -------------------------------------------------------------

    def list_workflows(self, *, status: str | Sequence[str] | None = None,
                       name: str | Sequence[str] | None = None,
                       queue: str | Sequence[str] | None = None,
                       parent_id: str | None = None,
                       created_after: datetime | None = None,
                       created_before: datetime | None = None,
                       limit: int = 100, offset: int = 0) -> list[WorkflowInfo]:
        """Workflows newest first, as :class:`WorkflowInfo` records. ``status``,
        ``name`` and ``queue`` take one value or several; ``created_after`` is
        inclusive, ``created_before`` exclusive. Page with ``limit``/``offset``."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")

        def many(value: str | Sequence[str] | None) -> list[str] | None:
            if value is None:
                return None
            return [value] if isinstance(value, str) else list(value)

        rows = self._db.fetchall(_queries.LIST_WORKFLOWS, {
            "status": many(status), "name": many(name), "queue": many(queue),
            "parent_id": parent_id, "created_after": created_after,
            "created_before": created_before, "limit": limit, "offset": offset})
        return [WorkflowInfo.from_row(dict(r)) for r in rows]

    def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """One workflow as a :class:`WorkflowInfo` (:class:`WorkflowNotFound` if none)."""
        row = self._db.fetchone(_queries.GET_WORKFLOW, (workflow_id,))
        assert row is not None
        return WorkflowInfo.from_row(dict(row))

    def get_steps(self, workflow_id: str) -> list[StepInfo]:
        """The recorded steps of a workflow in order, as :class:`StepInfo` records
        (:class:`WorkflowNotFound` if there is no such workflow)."""
        return [StepInfo.from_row(dict(r))
                for r in self._db.fetchall(_queries.GET_STEPS, (workflow_id,))]

    def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """The status of a workflow and why it waits (see :class:`WorkflowStatus`)."""
        row = self._db.fetchone(_queries.STATUS_DETAIL, (workflow_id,))
        assert row is not None
        return _records.status_from_row(dict(row))

    def workflow_statuses(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        """:meth:`workflow_status` of several workflows in one query, by id
        (unknown ids are left out)."""
        rows = self._db.fetchall(_queries.STATUS_MANY, (list(workflow_ids),))
        return {str(r["workflow_id"]): _records.status_from_row(dict(r)) for r in rows}

    def list_queues(self) -> list[QueueInfo]:
        """Every queue with its limits and live counts (``ratchet.queue_stats``)."""
        return [QueueInfo.from_row(dict(r)) for r in self._db.fetchall(_queries.QUEUES)]

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every cron schedule (``ratchet.schedules``)."""
        return [ScheduleInfo.from_row(dict(r)) for r in self._db.fetchall(_queries.SCHEDULES)]

    def list_workers(self) -> list[WorkerInfo]:
        """Workers holding running workflows, with their last heartbeat."""
        return [WorkerInfo.from_row(dict(r)) for r in self._db.fetchall(_queries.WORKERS)]

    def now(self) -> datetime:
        """The database's clock (``ratchet.now()``; the fake clock when a test
        enabled it), which decides every due time."""
        row = self._db.fetchone(_queries.NOW)
        assert row is not None
        return row["t"]  # type: ignore[no-any-return]

    def metrics(self, window: Seconds = 3600.0) -> list[QueueMetrics]:
        """Per queue over the last ``window`` seconds (``ratchet.metrics``):
        workflows started, succeeded, failed, cancelled; running and due now;
        the age of the oldest due workflow; step latency percentiles."""
        return [QueueMetrics.from_row(dict(r))
                for r in self._db.fetchall(_queries.METRICS, (to_seconds(window, "window"),))]

    # -- retention -----------------------------------------------------------

    def purge(self, older_than: Seconds, *, queue: str | None = None,
              status: str | None = None, max_rows: int = 10000) -> int:
        """Delete ended workflows (with their steps, events and messages) that
        ended more than ``older_than`` seconds ago, optionally of one queue and
        end status; at most ``max_rows`` per call. Returns how many."""
        row = self._db.fetchone(
            _queries.PURGE,
            (to_seconds(older_than, "older_than"), max_rows, queue, status))
        return int(row["n"] or 0) if row else 0

    def set_retention(self, queue: str, status: str, keep: Seconds | None) -> None:
        """Keep ended workflows of ``queue`` with ``status`` (succeeded, failed,
        cancelled, dead, or all) for ``keep`` seconds; None keeps them forever."""
        self._db.fetchone(
            _queries.SET_RETENTION,
            (queue, status, to_seconds(keep, "keep")))

    def count_purgeable(self, older_than: Seconds, *, queue: str | None = None,
                        status: str | None = None) -> int:
        """How many ended workflows :meth:`purge` would delete (``purge --dry-run``)."""
        row = self._db.fetchone(
            _queries.COUNT_PURGEABLE,
            (to_seconds(older_than, "older_than"), queue, queue, status, status))
        return int(row["n"] or 0) if row else 0

    def retention(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Retention per queue and end status, with how many are due now
        (the ``ratchet.retention`` view)."""
        return [dict(r) for r in self._db.fetchall(
            _queries.RETENTION, (queue, queue))]

    def maintain(self, max_rows: int = 500) -> dict[str, Any]:
        """One retention batch now (what workers run on a timer); returns the
        counts deleted and whether another session held the lock (skipped)."""
        row = self._db.fetchone(_queries.MAINTAIN, (max_rows,))
        return dict(row) if row else {}

    # -- workers -------------------------------------------------------------

    def run_worker(self, queues: Sequence[str] = ("default",), *, concurrency: int = 16,
                   lease: float = 30.0, poll_interval: float | None = None,
                   grace_period: float = 10.0, install_signal_handlers: bool = True,
                   maintenance_interval: float | None = 60.0) -> None:
        """Run a worker in this thread until SIGTERM/SIGINT (see :class:`Worker`)."""
        self.worker(queues, concurrency=concurrency, lease=lease, poll_interval=poll_interval,
                    grace_period=grace_period,
                    install_signal_handlers=install_signal_handlers,
                    maintenance_interval=maintenance_interval).run()

    def worker(self, queues: Sequence[str] = ("default",), *, concurrency: int = 16,
               lease: float = 30.0, poll_interval: float | None = None,
               grace_period: float = 10.0, install_signal_handlers: bool = True,
               maintenance_interval: float | None = 60.0, maintenance_batch: int = 500,
               batch_finishes: bool = True, batch_checkpoints: bool | None = None) -> Worker:
        """A :class:`Worker` for this app (call ``run()``; ``stop()`` from another
        thread). It runs retention (``maintain()``) every ``maintenance_interval``
        seconds; None turns that off. ``batch_finishes``: write the finishes
        ready within about 1 ms in one call and commit with the next claim
        (``ratchet.finish_and_claim``); False finishes each alone.
        ``batch_checkpoints``: the checkpoints that runs ask for while one is
        being written go in the next call (``ratchet.record_steps``, one
        commit); None (default): only when ``concurrency >= 8``, where it was
        measured to pay; False writes each alone."""
        from ._worker import Worker

        return Worker(self, queues, concurrency=concurrency, lease=lease,
                      poll_interval=poll_interval, grace_period=grace_period,
                      install_signal_handlers=install_signal_handlers,
                      maintenance_interval=maintenance_interval,
                      maintenance_batch=maintenance_batch, batch_finishes=batch_finishes,
                      batch_checkpoints=batch_checkpoints)


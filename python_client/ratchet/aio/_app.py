"""The async application object: :class:`AsyncApp`, the asyncio twin of
:class:`ratchet.App` on psycopg's ``AsyncConnectionPool``.

The same extension functions do all the work; nothing here decides what
runs when. Workflows and transactional steps are ``async def``; steps may be
``async def`` (run on the event loop) or plain ``def`` (run in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, cast, overload

import psycopg

from .. import _queries, _records
from .._app import make_worker_id
from .._errors import connection_lost
from .._json import dumps
from .._middleware import ExecutionInfo, Middleware
from .._otel import stored_context, tracing_for
from .._records import QueueInfo, QueueMetrics, StepInfo, WorkerInfo, WorkflowInfo, WorkflowStatus
from .._settings import AppSettings
from .._workflows import (
    START_OPTION_NAMES,
    BoundWorkflow,
    Seconds,
    StartItem,
    StartOptions,
    WorkflowDefinition,
    child_start,
    default_name,
    start_items,
    start_params,
    to_seconds,
)
from ._context import AsyncMiddlewareChain, AsyncWorkflowContext, active_async_workflow
from ._db import AsyncDatabase
from ._handles import AsyncWorkflowHandle
from ._runs import claim_and_run, heartbeat_loop, run_directly
from ._steps import AsyncStep, AsyncTransaction
from ._waits import get_event as get_event_in_workflow
from ._waits import read_event

if TYPE_CHECKING:
    from ._worker import AsyncWorker

logger = logging.getLogger("ratchet")

P = ParamSpec("P")
R = TypeVar("R")


class _StepDecorator(Protocol):
    """The type of ``@app.step(...)`` with options (for type checkers)."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> AsyncStep[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> AsyncStep[P, R]: ...


class AsyncWorkflow(WorkflowDefinition[P, R]):
    """An ``async def`` registered with :meth:`AsyncApp.workflow`. Start it with
    ``await app.start(wf, ...)``, or await a call: outside a workflow it runs
    durably in this task and returns the result; inside an async workflow it
    runs as a child workflow (checkpointed) and returns the child's result."""

    app: AsyncApp
    fn: Callable[P, Awaitable[R]]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, await self.app._call_directly(self, args, kwargs))


def _require_async(fn: Callable[..., Any], decorator: str) -> None:
    if not inspect.iscoroutinefunction(getattr(fn, "__func__", fn)):
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"@app.{decorator}() of ratchet.aio.AsyncApp needs an `async def` function, "
            f"not {name!r} (a plain function would block the event loop). Hint: make it "
            "`async def`, or register it with a synchronous ratchet.App")


class _LocalRunner:
    """The worker id of workflows run by awaited direct calls in this process,
    with a heartbeat task while any of them runs."""

    lease = 30.0

    def __init__(self, app: AsyncApp) -> None:
        self.app = app
        self.worker_id = make_worker_id("local-")
        self._active = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._active += 1
        if self._task is None or self._task.done():
            self._stop = asyncio.Event()
            self._task = asyncio.ensure_future(
                heartbeat_loop(self.app, self.worker_id, self.lease, self._stop, lambda: None))
        try:
            yield self.worker_id
        finally:
            self._active -= 1
            if self._active == 0:
                self._stop.set()


class AsyncApp(AppSettings):
    """An asyncio Ratchet application: the options and behaviour of
    :class:`ratchet.App` (see there), with every call awaited.

    ::

        app = ratchet.AsyncApp("postgresql:///mydb")

        @app.step(retries=3)
        async def charge(order_id: int) -> str: ...

        @app.workflow()
        async def checkout(order_id: int) -> str:
            receipt = await charge(order_id)
            await ratchet.aio.sleep(60)
            return receipt

        handle = await app.start(checkout.with_options(workflow_id="order-42"), 42)
        print(await handle.result(timeout=30))

    Inside async workflows use ``ratchet.aio.sleep``/``recv``/``set_event``/
    ``get_event``/``patched``; the synchronous forms raise
    :class:`ratchet.AsyncNotSupported` there rather than block the loop.
    """

    def __init__(self, dsn: str | None = None, *, pool_size: int | None = None,
                 suspend_threshold: float = 2.0, poll_interval: float | None = None,
                 prepared_statements: bool = False, listen_dsn: str | None = None,
                 pooled: bool | None = None, app_version: str | None = None,
                 tracing: Any = None) -> None:
        self._db: AsyncDatabase
        self._configure(AsyncDatabase(dsn, pool_size=pool_size,
                                      prepared_statements=prepared_statements),
                        suspend_threshold=suspend_threshold, poll_interval=poll_interval,
                        listen_dsn=listen_dsn, pooled=pooled, app_version=app_version)
        self._middleware = AsyncMiddlewareChain()
        self._tracing = tracing_for(tracing, None)
        self._workflows: dict[str, AsyncWorkflow[..., Any]] = {}
        self._local: _LocalRunner | None = None

    def __repr__(self) -> str:
        return f"<ratchet.AsyncApp workflows={sorted(self._workflows)}>"

    # -- configuration -------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Wrap every workflow run and step execution (see
        :class:`ratchet.aio._context.AsyncMiddlewareChain` for the styles)."""
        self._middleware.add(middleware)

    async def _run_middleware(self, info: ExecutionInfo,
                              fn: Callable[[], Awaitable[Any]]) -> Any:
        """``fn()`` inside the tracing span (outermost) and the user's middleware."""
        if self._tracing is None:
            return await self._middleware.run(info, fn)
        parent = None
        if info.kind == "workflow":
            try:
                row = await self._db.fetchone(_queries.TRACE_CONTEXT, (info.workflow_id,))
                parent = stored_context(row["trace_context"] if row else None)
            except Exception:  # tracing never fails a run
                logger.warning("workflow %s: could not read its trace context",
                               info.workflow_id, exc_info=True)
        with self._tracing.span(info, parent):
            return await self._middleware.run(info, fn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Borrow a connection of the app's pool (autocommit mode)."""
        async with self._db.connection() as conn:
            yield conn

    async def close(self) -> None:
        """Close the pool and the notification listener."""
        self._listener.close()
        await self._db.close()

    async def __aenter__(self) -> AsyncApp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def workflows(self) -> dict[str, AsyncWorkflow[..., Any]]:
        """The registered workflows by name."""
        return dict(self._workflows)

    # -- decorators ----------------------------------------------------------

    @overload
    def workflow(self, fn: Callable[P, Awaitable[R]], /) -> AsyncWorkflow[P, R]: ...

    @overload
    def workflow(self, /, *, name: str | None = None, queue: str = "default",
                 max_attempts: int | None = None, timeout: Seconds | None = None,
                 retries: int = 0, retry_interval: float = 1.0, retry_backoff: float = 2.0,
                 retry_max_delay: float = 300.0,
                 ) -> Callable[[Callable[P, Awaitable[R]]], AsyncWorkflow[P, R]]: ...

    def workflow(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
                 queue: str = "default", max_attempts: int | None = None,
                 timeout: Seconds | None = None, retries: int = 0,
                 retry_interval: float = 1.0, retry_backoff: float = 2.0,
                 retry_max_delay: float = 300.0) -> Any:
        """Register an ``async def`` workflow (options as :meth:`ratchet.App.workflow`)."""
        timeout_s = to_seconds(timeout, "timeout")

        def register(func: Callable[P, Awaitable[R]]) -> AsyncWorkflow[P, R]:
            _require_async(func, "workflow")
            wf_name = name or default_name(func)
            if wf_name in self._workflows:
                raise ValueError(f"a workflow named {wf_name!r} is already registered")
            wf: AsyncWorkflow[P, R] = AsyncWorkflow(
                self, func, name=wf_name, queue=queue, max_attempts=max_attempts,
                timeout=timeout_s, retries=retries, retry_interval=retry_interval,
                retry_backoff=retry_backoff, retry_max_delay=retry_max_delay)
            self._workflows[wf_name] = wf
            return wf

        return register if fn is None else register(fn)

    @overload
    def step(self, fn: Callable[P, Awaitable[R]], /) -> AsyncStep[P, R]: ...

    @overload
    def step(self, fn: Callable[P, R], /) -> AsyncStep[P, R]: ...

    @overload
    def step(self, /, *, retries: int = 0, backoff: float = 2.0, interval: float = 1.0,
             max_delay: float = 60.0, timeout: float | None = None, name: str | None = None,
             ) -> _StepDecorator: ...

    def step(self, fn: Callable[..., Any] | None = None, /, *, retries: int = 0,
             backoff: float = 2.0, interval: float = 1.0, max_delay: float = 60.0,
             timeout: float | None = None, name: str | None = None) -> Any:
        """Register a step (options as :meth:`ratchet.App.step`): ``async def``
        runs on the event loop and a ``timeout`` cancels it; a plain ``def`` runs
        in a thread. Await it inside a workflow."""

        def register(func: Callable[..., Any]) -> AsyncStep[Any, Any]:
            return AsyncStep(self, func, name=name or default_name(func), retries=retries,
                             backoff=backoff, interval=interval, max_delay=max_delay,
                             timeout=timeout)

        return register if fn is None else register(fn)

    @overload
    def transaction(self, fn: Callable[Concatenate[psycopg.AsyncCursor[Any], P], Awaitable[R]],
                    /) -> AsyncTransaction[P, R]: ...

    @overload
    def transaction(self, /, *, name: str | None = None, retries: int = 0,
                    backoff: float = 2.0, interval: float = 1.0, max_delay: float = 60.0,
                    ) -> Callable[[Callable[Concatenate[psycopg.AsyncCursor[Any], P],
                                            Awaitable[R]]], AsyncTransaction[P, R]]: ...

    def transaction(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
                    retries: int = 0, backoff: float = 2.0, interval: float = 1.0,
                    max_delay: float = 60.0) -> Any:
        """Register an ``async def`` transactional step: it receives a psycopg
        ``AsyncCursor`` first, and its SQL commits with its checkpoint (see
        :meth:`ratchet.App.transaction`)."""

        def register(func: Callable[Concatenate[psycopg.AsyncCursor[Any], P], Awaitable[R]]
                     ) -> AsyncTransaction[P, R]:
            _require_async(func, "transaction")
            return AsyncTransaction(self, func, name=name or default_name(func),
                                    retries=retries, backoff=backoff, interval=interval,
                                    max_delay=max_delay)

        return register if fn is None else register(fn)

    # -- starting ------------------------------------------------------------

    @overload
    async def start(self, fn: AsyncWorkflow[P, R] | BoundWorkflow[P, R], /, *args: P.args,
                    **kwargs: P.kwargs) -> AsyncWorkflowHandle[R]: ...

    @overload
    async def start(self, fn: str, /, *args: Any, **kwargs: Any) -> AsyncWorkflowHandle[Any]: ...

    async def start(self, fn: AsyncWorkflow[..., Any] | BoundWorkflow[..., Any] | str, /,
                    *args: Any, **kwargs: Any) -> AsyncWorkflowHandle[Any]:
        """Start a workflow and return a handle (see :meth:`ratchet.App.start`;
        options through ``wf.with_options(...)``). Inside an async workflow
        this is a checkpointed step."""
        options = None
        if not isinstance(fn, BoundWorkflow):
            given = {k: kwargs.pop(k) for k in START_OPTION_NAMES if k in kwargs}
            options = StartOptions(**given) if given else None
        return AsyncWorkflowHandle(self, await self._start(fn, args, kwargs, options))

    async def start_many(self, items: Sequence[StartItem]) -> list[AsyncWorkflowHandle[Any]]:
        """Start many workflows in one call and one commit (see
        :meth:`ratchet.App.start_many`)."""
        if active_async_workflow() is not None:
            raise RuntimeError("start_many() cannot be called inside a workflow; "
                               "start child workflows with app.start()")
        body = start_items(items, app_version=self.app_version)
        row = await self._db.fetchone(_queries.START_MANY, (body,))
        assert row is not None
        return [AsyncWorkflowHandle(self, str(i)) for i in row["workflow_ids"]]

    async def _start(self, fn: WorkflowDefinition[..., Any] | BoundWorkflow[..., Any] | str,
                     args: Sequence[Any], kwargs: dict[str, Any],
                     options: StartOptions | None = None) -> str:
        params = start_params(fn, args, kwargs, options, app_version=self.app_version)
        ctx = active_async_workflow()
        if ctx is not None:
            if self._tracing is not None:
                carrier = self._tracing.carrier()
                params["trace_context"] = None if carrier is None else dumps(carrier, "trace")
            return await _start_child(ctx, params)
        # chosen here, so a start whose reply was lost can be sent again (idempotent)
        params["workflow_id"] = params["workflow_id"] or str(uuid.uuid4())
        with (self._tracing.start(params["name"], params) if self._tracing is not None
              else contextlib.nullcontext()):
            try:
                row = await self._db.fetchone(_queries.START, params)
            except psycopg.Error as exc:
                if not connection_lost(exc):
                    raise
                row = await self._db.fetchone(_queries.START, params)
        assert row is not None
        return str(row["workflow_id"])

    async def _call_directly(self, wf: AsyncWorkflow[..., Any] | BoundWorkflow[..., Any],
                             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from ._waits import child_result

        ctx = active_async_workflow()
        if ctx is not None:
            child_id = await self._start(wf, args, kwargs)
            if ctx.next_step not in ctx.recorded:
                try:  # under the parent's worker, whose heartbeat renews it too
                    await claim_and_run(self, child_id, ctx.worker_id, ctx.lease)
                except psycopg.Error as exc:
                    raise ctx.run_error(exc) from exc
            return await child_result(ctx, child_id, None)
        workflow_id = await self._start(wf, args, kwargs)
        if self._local is None:
            self._local = _LocalRunner(self)
        async with self._local.running() as worker_id:
            return await run_directly(self, workflow_id, worker_id, self._local.lease)

    async def retrieve(self, workflow_id: str) -> AsyncWorkflowHandle[Any]:
        """A handle to an existing workflow (:class:`WorkflowNotFound` if none)."""
        handle: AsyncWorkflowHandle[Any] = AsyncWorkflowHandle(self, workflow_id)
        await handle.info()
        return handle

    # -- messages and events ---------------------------------------------------

    async def send(self, destination_id: str, message: Any, topic: str | None = None,
                   idempotency_key: str | None = None) -> int:
        """Send a message (see :meth:`ratchet.App.send`); inside an async
        workflow a checkpointed step."""
        body = dumps(message, "the message")
        ctx = active_async_workflow()
        if ctx is None:
            row = await self._db.fetchone(_queries.SEND,
                                          (destination_id, body, topic, idempotency_key))
            assert row is not None
            return int(row["message_id"])
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, "send")
        if rec is not None:
            return int((rec.get("output") or {}).get("message_id") or 0)
        row = await ctx.call(_queries.SEND_STEP, {
            "destination_id": destination_id, "message": body, "topic": topic,
            "idempotency_key": idempotency_key or f"{ctx.workflow_id}:{step_id}",
            "workflow_id": ctx.workflow_id, "run_id": ctx.run_id, "step_id": step_id})
        assert row is not None
        return int(row["message_id"])

    async def get_event(self, workflow_id: str, key: str, timeout: float | None = None) -> Any:
        """An event's latest value (see :meth:`ratchet.App.get_event`)."""
        if active_async_workflow() is not None:
            return await get_event_in_workflow(workflow_id, key, timeout)
        return await read_event(self, workflow_id, key, timeout)

    # -- managing and reading ----------------------------------------------------

    async def cancel(self, workflow_id: str) -> int:
        """Cancel a workflow and its live children; returns how many."""
        row = await self._db.fetchone(_queries.CANCEL, (workflow_id,))
        return int(row["cancelled"] or 0) if row else 0

    async def resume(self, workflow_id: str) -> None:
        """Put a failed, cancelled or dead workflow back in its queue."""
        await self._db.fetchone(_queries.RESUME, (workflow_id,))

    async def fork(self, workflow_id: str, from_step: int,
                   new_workflow_id: str | None = None) -> AsyncWorkflowHandle[Any]:
        """A new workflow re-running from ``from_step`` (see :meth:`ratchet.App.fork`)."""
        row = await self._db.fetchone(_queries.FORK, (workflow_id, from_step, new_workflow_id))
        assert row is not None
        return AsyncWorkflowHandle(self, str(row["workflow_id"]))

    async def create_queue(self, name: str, *, concurrency: int | None = None,
                           worker_concurrency: int | None = None,
                           rate_limit: int | None = None,
                           rate_period: Seconds | None = None) -> None:
        """Create or reconfigure a queue (see :meth:`ratchet.App.create_queue`)."""
        await self._db.fetchone(_queries.CREATE_QUEUE, (
            name, concurrency, worker_concurrency, rate_limit,
            to_seconds(rate_period, "rate_period")))

    async def pause_queue(self, name: str) -> None:
        """Stop workers from claiming on queue ``name``."""
        await self._db.fetchone(_queries.PAUSE_QUEUE, (name,))

    async def resume_queue(self, name: str) -> None:
        """Let workers claim on queue ``name`` again."""
        await self._db.fetchone(_queries.RESUME_QUEUE, (name,))

    async def list_workflows(self, *, status: str | Sequence[str] | None = None,
                             name: str | Sequence[str] | None = None,
                             queue: str | Sequence[str] | None = None,
                             parent_id: str | None = None,
                             created_after: datetime | None = None,
                             created_before: datetime | None = None,
                             limit: int = 100, offset: int = 0) -> list[WorkflowInfo]:
        """Workflows newest first (see :meth:`ratchet.App.list_workflows`)."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")

        def many(value: str | Sequence[str] | None) -> list[str] | None:
            if value is None:
                return None
            return [value] if isinstance(value, str) else list(value)

        rows = await self._db.fetchall(_queries.LIST_WORKFLOWS, {
            "status": many(status), "name": many(name), "queue": many(queue),
            "parent_id": parent_id, "created_after": created_after,
            "created_before": created_before, "limit": limit, "offset": offset})
        return [WorkflowInfo.from_row(dict(r)) for r in rows]

    async def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """One workflow (:class:`WorkflowNotFound` if none)."""
        row = await self._db.fetchone(_queries.GET_WORKFLOW, (workflow_id,))
        assert row is not None
        return WorkflowInfo.from_row(dict(row))

    async def get_steps(self, workflow_id: str) -> list[StepInfo]:
        """The recorded steps of a workflow, in order."""
        return [StepInfo.from_row(dict(r))
                for r in await self._db.fetchall(_queries.GET_STEPS, (workflow_id,))]

    async def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """The status and why it waits (see :class:`WorkflowStatus`)."""
        row = await self._db.fetchone(_queries.STATUS_DETAIL, (workflow_id,))
        assert row is not None
        return _records.status_from_row(dict(row))

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue with its limits and live counts."""
        return [QueueInfo.from_row(dict(r)) for r in await self._db.fetchall(_queries.QUEUES)]

    async def list_workers(self) -> list[WorkerInfo]:
        """Workers holding running workflows, with their last heartbeat."""
        return [WorkerInfo.from_row(dict(r)) for r in await self._db.fetchall(_queries.WORKERS)]

    async def metrics(self, window: Seconds = 3600.0) -> list[QueueMetrics]:
        """Per-queue counts and latencies (see :meth:`ratchet.App.metrics`)."""
        return [QueueMetrics.from_row(dict(r)) for r in await self._db.fetchall(
            _queries.METRICS, (to_seconds(window, "window"),))]

    async def now(self) -> datetime:
        """The database's clock (``ratchet.now()``)."""
        row = await self._db.fetchone(_queries.NOW)
        assert row is not None
        return row["t"]  # type: ignore[no-any-return]

    async def schedule(self, name: str, cron: str, workflow: AsyncWorkflow[..., Any] | str,
                       input: Any = None, *, queue: str | None = None,
                       timezone: str = "UTC") -> None:
        """Start ``workflow`` on a cron schedule (see :meth:`ratchet.App.schedule`)."""
        wf_name = workflow.name if isinstance(workflow, AsyncWorkflow) else workflow
        if queue is None:
            queue = workflow.queue if isinstance(workflow, AsyncWorkflow) else "default"
        await self._db.fetchone(_queries.SCHEDULE, (
            name, cron, wf_name, dumps({} if input is None else input, "the input"), queue,
            timezone))

    async def unschedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""
        row = await self._db.fetchone(_queries.UNSCHEDULE, (name,))
        return bool(row and row["removed"])

    async def purge(self, older_than: Seconds, *, queue: str | None = None,
                    status: str | None = None, max_rows: int = 10000) -> int:
        """Delete ended workflows (see :meth:`ratchet.App.purge`)."""
        row = await self._db.fetchone(_queries.PURGE, (
            to_seconds(older_than, "older_than"), max_rows, queue, status))
        return int(row["n"] or 0) if row else 0

    # -- workers -------------------------------------------------------------

    def worker(self, queues: Sequence[str] = ("default",), *, concurrency: int = 16,
               lease: float = 30.0, poll_interval: float | None = None,
               grace_period: float = 10.0, install_signal_handlers: bool = True,
               maintenance_interval: float | None = 60.0,
               maintenance_batch: int = 500) -> AsyncWorker:
        """An :class:`AsyncWorker` for this app (``await worker.run()``)."""
        from ._worker import AsyncWorker

        return AsyncWorker(self, queues, concurrency=concurrency, lease=lease,
                           poll_interval=poll_interval, grace_period=grace_period,
                           install_signal_handlers=install_signal_handlers,
                           maintenance_interval=maintenance_interval,
                           maintenance_batch=maintenance_batch)

    async def run_worker(self, queues: Sequence[str] = ("default",), *, concurrency: int = 16,
                         lease: float = 30.0, poll_interval: float | None = None,
                         grace_period: float = 10.0, install_signal_handlers: bool = True,
                         maintenance_interval: float | None = 60.0) -> None:
        """Run a worker in this event loop until SIGTERM/SIGINT or cancellation."""
        await self.worker(queues, concurrency=concurrency, lease=lease,
                          poll_interval=poll_interval, grace_period=grace_period,
                          install_signal_handlers=install_signal_handlers,
                          maintenance_interval=maintenance_interval).run()


async def _start_child(ctx: AsyncWorkflowContext, params: dict[str, Any]) -> str:
    """:func:`ratchet._workflows.start_child` for async runs."""
    found, params = child_start(ctx, params)
    if found is not None:
        return found
    row = await ctx.call(_queries.START_CHILD, params)
    assert row is not None
    return str(row["workflow_id"])

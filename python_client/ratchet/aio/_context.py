"""One run of an async workflow: the shared :class:`ratchet._context.RunContext`
(step numbering, replay, ending the run) with awaitable database calls, plus
the async forms of notification waits and middleware."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg
from psycopg.rows import DictRow

from .. import _queries
from .._context import RunContext, active_run
from .._errors import AsyncNotSupported, _Suspended
from .._listener import Listener, Subscription
from .._middleware import ExecutionInfo, Middleware, _required_positional

if TYPE_CHECKING:
    from ._app import AsyncApp

logger = logging.getLogger("ratchet")


@dataclass
class AsyncWorkflowContext(RunContext):
    """One run of one workflow in the async client."""

    app: AsyncApp
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, query: str, params: Any,
                   conn: psycopg.AsyncConnection[Any] | None = None) -> DictRow | None:
        """Run one statement for this run (on ``conn`` or, fenced and retried
        while the lease holds, on a pooled connection); its first row."""
        self.check()
        try:
            if conn is not None:
                return await (await self.app._db.run(conn, query, params)).fetchone()
            return await self.app._db.run_fenced(query, params, self.lease_until, self.stop)
        except psycopg.Error as exc:
            raise self.run_error(exc) from exc

    async def pause(self, seconds: float) -> None:
        """Sleep in-process, waking early if the run is stopped."""
        if seconds > 0:
            try:
                await asyncio.wait_for(self.stop.wait(), seconds)
            except asyncio.TimeoutError:
                pass
        self.check()

    async def suspend(self, until: Any, wait_for: str | None = None,
                      wait_key: str | None = None) -> NoReturn:
        """Release the workflow until ``until`` (or an earlier wake-up) and end
        this run."""
        await self.call(_queries.SUSPEND,
                        (self.workflow_id, self.run_id, until, wait_for, wait_key))
        logger.info("ratchet: workflow %s suspended until %s (wait_for=%s)",
                    self.workflow_id, until, wait_for, extra=self.log_extra())
        raise self.abort(_Suspended(f"suspended until {until}"))


def active_async_workflow() -> AsyncWorkflowContext | None:
    """The async run whose code is executing in this task, unless inside a
    step; :class:`AsyncNotSupported` inside a synchronous workflow."""
    ctx = active_run()
    if ctx is None or isinstance(ctx, AsyncWorkflowContext):
        return ctx
    raise AsyncNotSupported(
        f"workflow {ctx.workflow_id!r} ({ctx.name}) is a synchronous workflow: "
        "ratchet.aio's awaitable API belongs in async workflows of ratchet.AsyncApp. "
        "Hint: use ratchet.sleep(), ratchet.recv(), ... in a sync workflow")


def require_async_workflow(what: str) -> AsyncWorkflowContext:
    """The active async run, or RuntimeError naming ``ratchet.aio.<what>()``."""
    ctx = active_async_workflow()
    if ctx is None:
        raise RuntimeError(f"ratchet.aio.{what}() can only be awaited inside an async "
                           "workflow (and not inside a step)")
    return ctx


class AsyncSubscription:
    """A :class:`ratchet._listener.Subscription` awaited on the event loop: the
    listener thread sets an asyncio event through ``call_soon_threadsafe``."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._sub: Subscription | None = None

    def _deliver(self, payload: str) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; clear it and report
        whether one came."""
        try:
            await asyncio.wait_for(self._event.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        self._event.clear()
        return True

    def close(self) -> None:
        """Stop receiving notifications."""
        if self._sub is not None:
            self._sub.close()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def subscribe(listener: Listener, channel: str,
                    payload: str | None = None) -> AsyncSubscription:
    """Subscribe to ``channel`` (see :meth:`Listener.subscribe`, which may wait
    for the LISTEN: done off the event loop)."""
    sub = AsyncSubscription()
    sub._sub = await asyncio.to_thread(listener.subscribe, channel, payload, sub._deliver)
    return sub


class AsyncMiddlewareChain:
    """Middleware around async runs and steps. The styles of
    :meth:`ratchet.App.add_middleware`, awaited: ``async def fn(info,
    call_next)`` awaiting ``call_next()``; ``fn(info)`` returning a context
    manager or an async context manager; a plain ``fn(info, call_next)``
    returns ``call_next()``'s awaitable, which is awaited."""

    def __init__(self) -> None:
        self._items: list[tuple[Middleware, bool]] = []

    def add(self, fn: Middleware) -> None:
        """Append ``fn`` (it runs inside the ones added before it)."""
        self._items.append((fn, _required_positional(fn) == 1))

    async def run(self, info: ExecutionInfo, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``fn()`` wrapped in every middleware."""
        call = fn
        for item, is_cm in reversed(self._items):
            call = _bind(item, is_cm, info, call)
        return await call()


def _bind(item: Middleware, is_cm: bool, info: ExecutionInfo,
          call_next: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        if is_cm:
            manager: Any = item(info)  # type: ignore[call-arg]
            if hasattr(manager, "__aenter__"):
                async with manager:
                    return await call_next()
            with manager:
                return await call_next()
        result = item(info, call_next)  # type: ignore[call-arg]
        while inspect.isawaitable(result):
            result = await result
        return result

    return call

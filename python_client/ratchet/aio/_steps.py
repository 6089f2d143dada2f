"""Async steps: checkpointed like :mod:`ratchet._steps` (the same numbering,
replay, retry policy computed by the database and one ``record_step`` per
outcome), awaited.

An ``async def`` step runs on the event loop; a timeout cancels it (unlike a
synchronous step's thread, an async step can be stopped). A plain ``def``
step given to :class:`AsyncApp` runs in a worker thread
(``asyncio.to_thread``), so it does not block the loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast

import psycopg

from .. import _queries
from .._context import StepContext, current_step
from .._errors import StepTimeout, _ControlFlow, connection_lost, error_payload, step_error
from .._json import dumps
from .._middleware import ExecutionInfo
from .._steps import Checkpointed, _UserFailure, call_with_timeout, replay_step, retry_policy
from ._context import AsyncWorkflowContext, active_async_workflow

if TYPE_CHECKING:
    from ._app import AsyncApp

logger = logging.getLogger("ratchet")

P = ParamSpec("P")
R = TypeVar("R")


async def call_async(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                     timeout: float | None, name: str) -> Any:
    """Await ``fn(*args, **kwargs)`` (a plain function runs in a thread), raising
    :class:`StepTimeout` after ``timeout`` seconds: an async function is then
    cancelled, a thread abandoned."""
    if not inspect.iscoroutinefunction(fn):
        return await asyncio.to_thread(
            call_with_timeout, lambda: fn(*args, **kwargs), timeout, name)
    if timeout is None:
        return await fn(*args, **kwargs)
    task = asyncio.ensure_future(fn(*args, **kwargs))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        raise StepTimeout(f"step {name!r} did not finish within {timeout} s")
    return task.result()


class AsyncStepBase:
    """What every kind of async step has (see :class:`ratchet._steps.StepBase`)."""

    def __init__(self, app: AsyncApp, *, name: str, retries: int, backoff: float,
                 interval: float, max_delay: float) -> None:
        self.retry_policy = retry_policy(retries, interval, backoff, max_delay)
        self.app = app
        self.name = name
        self.retries = retries

    async def _run_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def _attempt(self, ctx: AsyncWorkflowContext, step_id: int, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ctx = active_async_workflow()
        if ctx is None:
            return await self._run_plain(args, kwargs)
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, self.name)
        if rec is not None:
            return replay_step(rec, step_id, self.name)
        info = ExecutionInfo("step", self.name, ctx.workflow_id, ctx.run_id, ctx.attempt,
                             step_id)
        return await ctx.app._run_middleware(
            info, lambda: self._execute(ctx, step_id, args, kwargs))

    async def _execute(self, ctx: AsyncWorkflowContext, step_id: int, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            attempt += 1
            token = current_step.set(StepContext(ctx.workflow_id, step_id, self.name, attempt))
            try:
                result = await self._attempt(ctx, step_id, args, kwargs)
                if isinstance(result, Checkpointed):
                    return result.value
                output = dumps(result, f"the result of step {self.name!r}")
            except _ControlFlow:
                raise
            except Exception as exc:
                ctx.check()  # a failure caused by the run ending is not the step's
                delay = await self._retry_delay(ctx, attempt)
                if delay is not None:
                    logger.info("step %s (#%d) of %s failed (%s: %s); retry %d/%d in "
                                "%.2f s", self.name, step_id, ctx.workflow_id,
                                type(exc).__name__, exc, attempt, self.retries, delay,
                                extra=ctx.log_extra(step_id))
                    await ctx.pause(delay)
                    continue
                error = error_payload(exc)
                error["attempts"] = attempt
                await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id,
                                                      self.name, None,
                                                      dumps(error, "the step error")))
                raise step_error(error, step_id, self.name) from exc
            finally:
                current_step.reset(token)
            await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id,
                                                  self.name, output, None))
            return json.loads(output)

    async def _retry_delay(self, ctx: AsyncWorkflowContext, attempt: int) -> float | None:
        if self.retry_policy is None:
            return None
        row = await ctx.call(_queries.RETRY_DELAY,
                             (dumps(self.retry_policy, "the retry policy"), attempt))
        return None if row is None or row["delay"] is None else float(row["delay"])


class AsyncStep(AsyncStepBase, Generic[P, R]):
    """A function registered with :meth:`AsyncApp.step`: awaited, it is
    checkpointed inside an async workflow and plain code anywhere else."""

    def __init__(self, app: AsyncApp, fn: Callable[P, Any], *, name: str, retries: int,
                 backoff: float, interval: float, max_delay: float,
                 timeout: float | None) -> None:
        super().__init__(app, name=name, retries=retries, backoff=backoff, interval=interval,
                         max_delay=max_delay)
        self.fn = fn
        self.timeout = timeout
        functools.update_wrapper(self, fn)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, await self._call(args, kwargs))

    async def _run_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await call_async(self.fn, args, kwargs, None, self.name)

    async def _attempt(self, ctx: AsyncWorkflowContext, step_id: int, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        return await call_async(self.fn, args, kwargs, self.timeout, self.name)

    def __repr__(self) -> str:
        return f"<ratchet.aio.AsyncStep {self.name!r}>"


class AsyncTransaction(AsyncStepBase, Generic[P, R]):
    """An ``async def`` registered with :meth:`AsyncApp.transaction`: it receives
    an async cursor, and its SQL commits in one transaction with its
    checkpoint (exactly once)."""

    def __init__(self, app: AsyncApp,
                 fn: Callable[Concatenate[psycopg.AsyncCursor[Any], P], Awaitable[R]], *,
                 name: str, retries: int, backoff: float, interval: float,
                 max_delay: float) -> None:
        super().__init__(app, name=name, retries=retries, backoff=backoff, interval=interval,
                         max_delay=max_delay)
        self.fn = fn
        functools.update_wrapper(self, fn)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, await self._call(args, kwargs))

    async def _run_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        async with self.app._db.connection() as conn, conn.transaction():
            async with conn.cursor() as cur:
                return await self.fn(cur, *args, **kwargs)

    async def _attempt(self, ctx: AsyncWorkflowContext, step_id: int, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        # the same shape as ratchet._steps.Transaction._attempt: a lost
        # connection (in the function or at COMMIT) or a class 40 failure is
        # never the step's failure; the run is released and replays
        try:
            async with self.app._db.connection() as conn:
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        try:
                            result = await self.fn(cur, *args, **kwargs)
                            output = dumps(result, f"the result of step {self.name!r}")
                        except Exception as exc:
                            if connection_lost(exc):
                                raise
                            raise _UserFailure(exc) from exc
                    await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id,
                                                          self.name, output, None), conn=conn)
        except _UserFailure as failure:
            raise failure.exc from None
        except psycopg.Error as exc:
            if not connection_lost(exc) and not (exc.sqlstate or "").startswith("40"):
                raise
            raise ctx.run_error(exc) from exc
        return Checkpointed(json.loads(output))

    def __repr__(self) -> str:
        return f"<ratchet.aio.AsyncTransaction {self.name!r}>"

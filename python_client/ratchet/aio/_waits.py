"""Durable waits inside async workflows (sleep, messages, events, children)
and waiting outside them: the same steps and SQL as :mod:`ratchet._waits`
and :func:`ratchet._outcome.child_result`, awaited. A long wait suspends the
run and frees the worker, as in the sync client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from .. import _queries
from .._json import dumps
from .._listener import ENDED, EVENT, MESSAGE
from .._outcome import (
    ENDED_STATUSES,
    outcome_payload,
    raise_outcome,
    replay_result,
    timeout_payload,
)
from .._patches import PATCH_MARKER, PATCH_PREFIX, decide_patch
from .._waits import next_wait
from ._context import AsyncWorkflowContext, active_async_workflow, require_async_workflow, subscribe

if TYPE_CHECKING:
    from ._app import AsyncApp

T = TypeVar("T")


async def _slice(ctx: AsyncWorkflowContext, started: float, remaining: float | None,
                 wake_at: Any, wait_for: str, wait_key: str | None) -> float:
    """See :func:`ratchet._waits.wait_slice`."""
    slice_ = next_wait(ctx.app, started, remaining)
    if slice_ is None:
        await ctx.suspend(wake_at if wake_at is not None else "infinity", wait_for, wait_key)
    return slice_


async def _deadline(ctx: AsyncWorkflowContext, step_id: int, rec: dict[str, Any] | None,
                    seconds: float) -> Any:
    if rec is not None:
        return (rec.get("output") or {})["wake_at"]
    row = await ctx.call(_queries.DURABLE_SLEEP,
                         (ctx.workflow_id, ctx.run_id, step_id, float(seconds)))
    assert row is not None
    return row["wake_at"]


async def sleep(seconds: float) -> None:
    """Sleep durably inside an async workflow (``asyncio.sleep`` elsewhere);
    see :func:`ratchet.sleep`."""
    ctx = active_async_workflow()
    if ctx is None:
        await asyncio.sleep(seconds)
        return
    step_id = ctx.take_step()
    rec = ctx.lookup(step_id, "sleep")
    if rec is not None and ctx.replaying_past(step_id):
        return
    row = await ctx.call(_queries.DURABLE_SLEEP,
                         (ctx.workflow_id, ctx.run_id, step_id, float(seconds)))
    assert row is not None
    remaining = float(row["remaining_seconds"] or 0.0)
    if remaining <= 0:
        return
    if remaining > ctx.app.suspend_threshold:
        await ctx.suspend(row["wake_at"])
    await ctx.pause(remaining)


async def recv(topic: str | None = None, timeout: float = 60.0) -> Any:
    """Receive one message sent to this workflow (on ``topic``), or None after
    ``timeout`` seconds; exactly once across crashes (see :func:`ratchet.recv`)."""
    ctx = require_async_workflow("recv")
    sleep_id = ctx.take_step()
    rec_sleep = ctx.lookup(sleep_id, "sleep")
    recv_id = ctx.take_step()
    rec = ctx.lookup(recv_id, "recv")
    if rec is not None:
        return rec.get("output")
    wake_at = await _deadline(ctx, sleep_id, rec_sleep, timeout)
    started = time.monotonic()
    async with await subscribe(ctx.app._listener, MESSAGE, ctx.workflow_id) as sub:
        while True:
            row = await ctx.call(_queries.RECV,
                                 (wake_at, ctx.workflow_id, ctx.run_id, recv_id, topic))
            assert row is not None
            if not row["missing"]:
                return row["message"]
            remaining = float(row["remaining"])
            if remaining <= 0:
                await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, recv_id,
                                                      "recv", None, None))
                return None
            await sub.wait(await _slice(ctx, started, remaining, wake_at, "message", topic))
            ctx.check()


async def set_event(key: str, value: Any) -> None:
    """Publish ``value`` under ``key`` for this workflow (see
    :func:`ratchet.set_event`)."""
    ctx = require_async_workflow("set_event")
    payload = dumps(value, f"the value of event {key!r}")
    step_id = ctx.take_step()
    if ctx.lookup(step_id, "set_event") is not None:
        return
    await ctx.call(_queries.SET_EVENT, (ctx.workflow_id, ctx.run_id, step_id, key, payload))


async def wait_for(app: AsyncApp, channel: str, payload: str | None,
                   check: Callable[[], Awaitable[tuple[bool, T]]], timeout: float | None,
                   ) -> tuple[bool, T]:
    """Await ``check`` until it reports done or ``timeout`` passes, waking on a
    notification on ``channel`` (carrying ``payload``) or every poll interval."""
    deadline = None if timeout is None else time.monotonic() + timeout
    async with await subscribe(app._listener, channel, payload) as sub:
        while True:
            done, value = await check()
            if done:
                return done, value
            if deadline is None:
                return False, value
            left = deadline - time.monotonic()
            if left <= 0:
                return False, value
            await sub.wait(min(left, app.poll_interval))


async def read_event(app: AsyncApp, workflow_id: str, key: str, timeout: float | None) -> Any:
    """Read an event, waiting up to ``timeout`` seconds for it to be set."""

    async def check() -> tuple[bool, Any]:
        row = await app._db.fetchone(_queries.GET_EVENT, (workflow_id, key))
        if row is None or row["missing"]:
            return False, None
        return True, row["value"]

    found, value = await wait_for(app, EVENT, workflow_id, check, timeout)
    return value if found else None


async def get_event(workflow_id: str, key: str, timeout: float | None = 60.0) -> Any:
    """Inside an async workflow: another workflow's event, checkpointed (see
    :func:`ratchet.get_event`)."""
    ctx = require_async_workflow("get_event")
    step_id = ctx.take_step()
    rec = ctx.lookup(step_id, "get_event")
    if rec is not None:
        return rec.get("output")
    try:
        value = await read_event(ctx.app, workflow_id, key, timeout)
    except psycopg.Error as exc:
        raise ctx.run_error(exc) from exc
    await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id, "get_event",
                                          dumps(value, "event value"), None))
    return value


async def child_result(ctx: AsyncWorkflowContext, workflow_id: str,
                       timeout: float | None) -> Any:
    """Wait for another workflow's result inside an async workflow, as a
    checkpointed step (see :func:`ratchet._outcome.child_result`)."""
    wake_at: Any = None
    if timeout is not None:
        sleep_id = ctx.take_step()
        rec_sleep = ctx.lookup(sleep_id, "sleep")
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, "result")
        if rec is None:
            wake_at = await _deadline(ctx, sleep_id, rec_sleep, timeout)
    else:
        step_id = ctx.take_step()
        rec = ctx.lookup(step_id, "result")
    if rec is not None:
        return replay_result(rec, workflow_id)
    started = time.monotonic()
    async with await subscribe(ctx.app._listener, ENDED, workflow_id) as sub:
        while True:
            row = await ctx.call(_queries.CHILD_STATUS, (wake_at, wake_at, workflow_id))
            assert row is not None
            status = row["status"]
            if status in ENDED_STATUSES:
                if status == "succeeded":
                    output, error = dumps(row["output"], "child output"), None
                else:
                    output, error = None, dumps(outcome_payload(workflow_id, status,
                                                                row["error"]), "child error")
                await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id,
                                                      "result", output, error))
                return raise_outcome(workflow_id, status, row["output"], row["error"])
            remaining = row["remaining"]
            if remaining is not None and remaining <= 0:
                payload = timeout_payload(workflow_id, timeout)
                await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, step_id,
                                                      "result", None, dumps(payload, "error")))
                raise TimeoutError(payload["message"])
            await sub.wait(await _slice(ctx, started, remaining, wake_at, "child", workflow_id))
            ctx.check()


async def patched(change_id: str) -> bool:
    """:func:`ratchet.patched` for async workflows (True outside workflows)."""
    if not change_id:
        raise ValueError("patched() needs a non-empty change id")
    ctx = active_async_workflow()
    if ctx is None:
        return True
    decision, marker_step = decide_patch(ctx, change_id)
    if marker_step is not None:
        await ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, marker_step,
                                              PATCH_PREFIX + change_id, PATCH_MARKER, None))
    return decision

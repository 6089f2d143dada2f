"""Durable waits inside workflows: sleep, messages, events; and waiting outside.

Every deadline is recorded as a ``sleep`` step from the database clock, so it
survives restarts. A wait holds its worker for at most the app's
``suspend_threshold``; a longer one suspends the run (the database wakes it
when the time comes, or the message or event arrives).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from . import _queries
from ._context import WorkflowContext, active_workflow, require_workflow
from ._json import dumps
from ._listener import EVENT, MESSAGE

if TYPE_CHECKING:
    from ._app import App

T = TypeVar("T")


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


def durable_deadline(ctx: WorkflowContext, step_id: int, rec: dict[str, Any] | None,
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
    ctx = require_workflow("recv")
    app = ctx.app
    sleep_id = ctx.take_step()
    rec_sleep = ctx.lookup(sleep_id, "sleep")
    recv_id = ctx.take_step()
    rec = ctx.lookup(recv_id, "recv")
    if rec is not None:
        return rec.get("output")
    wake_at = durable_deadline(ctx, sleep_id, rec_sleep, timeout)
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
            sub.wait(wait_slice(ctx, started, remaining, wake_at, "message", topic))
            ctx.check()


def next_wait(app: Any, started: float, remaining: float | None) -> float | None:
    """How long to wait in-process before checking again (a wait begun at
    ``started``, monotonic, with ``remaining`` seconds to its deadline, None:
    none), or None once it has waited ``suspend_threshold`` with more than
    that left: then the run suspends. No I/O; the async client shares it."""
    waited = time.monotonic() - started
    if remaining is None or remaining > app.suspend_threshold:
        if waited >= app.suspend_threshold:
            return None
        return float(min(app.poll_interval, app.suspend_threshold - waited))
    return float(min(app.poll_interval, remaining))


def wait_slice(ctx: WorkflowContext, started: float, remaining: float | None,
                wake_at: Any, wait_for: str, wait_key: str | None) -> float:
    """How long to wait in-process before checking again; suspends the run
    instead once it has waited ``suspend_threshold`` with more than that left."""
    slice_ = next_wait(ctx.app, started, remaining)
    if slice_ is None:
        ctx.suspend(wake_at if wake_at is not None else "infinity", wait_for, wait_key)
    return slice_


def set_event(key: str, value: Any) -> None:
    """Publish ``value`` under ``key`` for this workflow (checkpointed; the latest
    value wins). Anyone can read it with ``get_event(workflow_id, key)``."""
    ctx = require_workflow("set_event")
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
    ctx = require_workflow("get_event")
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

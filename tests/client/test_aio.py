"""What only the async client has: its guards against blocking the event
loop, cancellation of a timed-out async step, and shutting a worker down by
cancelling its task. Everything both clients share is in test_both_clients.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import poll

import ratchet
from ratchet import aio


@pytest.fixture
def async_app(dsn: str) -> ratchet.AsyncApp:
    return ratchet.AsyncApp(dsn, poll_interval=0.1)


def status_of(conn: Any, workflow_id: str) -> dict[str, Any]:
    return conn.execute("select status, run_id, error, attempts from ratchet.workflows "
                        "where workflow_id = %s", (workflow_id,)).fetchone()


def test_a_plain_function_is_refused_as_an_async_workflow(async_app):
    with pytest.raises(TypeError, match="async def"):
        @async_app.workflow()
        def blocking() -> None: ...

    with pytest.raises(TypeError, match="async def"):
        @async_app.transaction()
        def blocking_tx(cur: Any) -> None: ...


def test_the_sync_api_inside_an_async_workflow_fails_it_with_a_hint(async_app, conn):
    @async_app.workflow()
    async def mixed() -> None:
        ratchet.sleep(1)  # would block the loop and bypass the run

    async def main() -> Any:
        async with async_app:
            worker = async_app.worker(install_signal_handlers=False)
            task = asyncio.ensure_future(worker.run())
            handle = await async_app.start(mixed.with_options(workflow_id="mixed"))
            with pytest.raises(ratchet.WorkflowFailed) as failed:
                await handle.result(timeout=10)
            worker.stop()
            await task
            return failed.value.error

    error = asyncio.run(main())
    assert error["type"] == "ratchet.AsyncNotSupported"
    assert "await ratchet.aio.sleep" in error["message"]


def test_a_timed_out_async_step_is_cancelled(async_app, conn):
    finished: list[str] = []

    @async_app.step(timeout=0.1)
    async def slow() -> None:
        await asyncio.sleep(0.5)
        finished.append("slow")

    @async_app.workflow()
    async def impatient() -> str:
        try:
            await slow()
        except ratchet.StepTimeout:
            await aio.sleep(0.6)  # longer than slow's body would have taken
            return "timed out"
        return "finished"

    async def main() -> str:
        async with async_app:
            return str(await impatient())

    assert asyncio.run(main()) == "timed out"
    assert finished == []  # the coroutine was cancelled, not left running


def test_cancelling_the_worker_task_hands_running_workflows_back(async_app, conn):
    started = asyncio.Event()

    @async_app.workflow()
    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def main() -> None:
        async with async_app:
            worker = async_app.worker(install_signal_handlers=False, grace_period=0.1)
            task = asyncio.ensure_future(worker.run())
            await async_app.start(forever.with_options(workflow_id="forever"))
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    row = poll(lambda: status_of(conn, "forever"), 5, "the workflow row")
    # released (suspended until now), not left to its lease, and no attempt charged
    assert row["status"] == "enqueued" and row["run_id"] is None
    assert row["error"] is None

"""Ratchet for asyncio: :class:`AsyncApp` and the awaitable forms of the
workflow API, on psycopg's ``AsyncConnectionPool``.

The same extension functions do the work as for :class:`ratchet.App`, with
the same guarantees: steps are checkpointed (a replay returns the recorded
result), leases are fenced by ``run_id``, waits are durable::

    import ratchet
    from ratchet import aio

    app = ratchet.AsyncApp("postgresql:///mydb")

    @app.step(retries=3)
    async def charge(order_id: int) -> str: ...

    @app.workflow()
    async def checkout(order_id: int) -> str:
        receipt = await charge(order_id)
        await aio.sleep(60)              # durable, frees the worker
        return receipt

    async def main() -> None:
        handle = await app.start(checkout, 42)
        print(await handle.result(timeout=30))

Run its workers with ``ratchet worker myapp:app`` (the CLI sees an
``AsyncApp`` and runs an event loop) or ``await app.run_worker()``.
"""

from __future__ import annotations

from ._app import AsyncApp, AsyncWorkflow
from ._handles import AsyncWorkflowHandle
from ._steps import AsyncStep, AsyncTransaction
from ._waits import get_event, patched, recv, set_event, sleep
from ._worker import AsyncWorker

__all__ = [
    "AsyncApp",
    "AsyncStep",
    "AsyncTransaction",
    "AsyncWorker",
    "AsyncWorkflow",
    "AsyncWorkflowHandle",
    "get_event",
    "patched",
    "recv",
    "set_event",
    "sleep",
]

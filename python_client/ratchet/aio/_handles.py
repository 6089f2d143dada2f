"""Async handles: a started workflow, by id (the twin of
:class:`ratchet.WorkflowHandle`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .. import _queries
from .._records import WorkflowInfo, WorkflowStatus
from ._context import active_async_workflow

if TYPE_CHECKING:
    from ._app import AsyncApp

R = TypeVar("R")


class AsyncWorkflowHandle(Generic[R]):
    """A reference to a started workflow (from :meth:`AsyncApp.start` or
    :meth:`AsyncApp.retrieve`); every method is awaited."""

    def __init__(self, app: AsyncApp, workflow_id: str) -> None:
        self.app = app
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"<ratchet.aio.AsyncWorkflowHandle {self.workflow_id!r}>"

    async def info(self) -> dict[str, Any]:
        """The workflow's row of ``ratchet.workflows`` as a dict."""
        row = await self.app._db.fetchone(_queries.GET_WORKFLOW, (self.workflow_id,))
        assert row is not None
        return dict(row)

    async def get(self) -> WorkflowInfo:
        """The workflow's row as a typed :class:`WorkflowInfo`."""
        return WorkflowInfo.from_row(await self.info())

    async def status(self) -> WorkflowStatus:
        """The status with why it waits (see :meth:`ratchet.WorkflowHandle.status`)."""
        return await self.app.workflow_status(self.workflow_id)

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the end and return the output; raises as
        :meth:`ratchet.WorkflowHandle.result` does. Inside an async workflow the
        wait is a checkpointed step that frees the worker while it lasts."""
        from ._runs import workflow_result
        from ._waits import child_result

        ctx = active_async_workflow()
        if ctx is not None:
            return cast(R, await child_result(ctx, self.workflow_id, timeout))
        return cast(R, await workflow_result(self.app, self.workflow_id, timeout))

    async def cancel(self) -> int:
        """Cancel the workflow and its children; returns how many."""
        return await self.app.cancel(self.workflow_id)

    async def resume(self) -> None:
        """Put a failed, cancelled or dead workflow back in its queue."""
        await self.app.resume(self.workflow_id)

    async def steps(self) -> list[dict[str, Any]]:
        """The recorded steps, in order, as dicts."""
        return [dict(r) for r in await self.app._db.fetchall(_queries.GET_STEPS,
                                                             (self.workflow_id,))]

    async def get_event(self, key: str, timeout: float | None = None) -> Any:
        """This workflow's event ``key``."""
        return await self.app.get_event(self.workflow_id, key, timeout=timeout)

    async def send(self, message: Any, topic: str | None = None,
                   idempotency_key: str | None = None) -> int:
        """Send this workflow a message."""
        return await self.app.send(self.workflow_id, message, topic=topic,
                                   idempotency_key=idempotency_key)

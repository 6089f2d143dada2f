"""Handles: a started workflow, by id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from . import _queries
from ._context import active_workflow
from ._outcome import child_result, workflow_result
from ._records import WorkflowInfo, WorkflowStatus

if TYPE_CHECKING:
    from ._app import App

R = TypeVar("R")


class WorkflowHandle(Generic[R]):
    """A reference to a started workflow, by id (from :meth:`App.start` or
    :meth:`App.retrieve`)."""

    def __init__(self, app: App, workflow_id: str) -> None:
        self.app = app
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"<ratchet.WorkflowHandle {self.workflow_id!r}>"

    def info(self) -> dict[str, Any]:
        """The workflow's row of ``ratchet.workflows`` as a dict."""
        row = self.app._db.fetchone(_queries.GET_WORKFLOW, (self.workflow_id,))
        assert row is not None
        return dict(row)

    def status(self) -> WorkflowStatus:
        """The status (``enqueued``, ``running``, ``succeeded``, ``failed``,
        ``cancelled`` or ``dead``) with why it waits: a :class:`WorkflowStatus`
        (``waiting_for``, ``wait_key``, ``wake_at``, ``reason``,
        ``running_step``). It compares equal to the status string."""
        return self.app.workflow_status(self.workflow_id)

    def get(self) -> WorkflowInfo:
        """The workflow's row as a typed :class:`WorkflowInfo`."""
        return WorkflowInfo.from_row(self.info())

    def result(self, timeout: float | None = None) -> R:
        """Wait for the workflow to end and return its output.

        Raises :class:`WorkflowFailed` (failed or dead; carries the stored error),
        :class:`WorkflowCancelled`, or :class:`TimeoutError` after ``timeout``
        seconds (None: wait as long as it takes). Inside a workflow the wait is a
        checkpointed step that releases the worker while the other workflow runs.
        """
        ctx = active_workflow()
        if ctx is not None:
            return cast(R, child_result(ctx, self.workflow_id, timeout))
        return cast(R, workflow_result(self.app, self.workflow_id, timeout))

    def cancel(self) -> int:
        """Cancel the workflow and its children; returns how many were cancelled."""
        return self.app.cancel(self.workflow_id)

    def resume(self) -> None:
        """Put a failed, cancelled or dead workflow back in its queue."""
        self.app.resume(self.workflow_id)

    def steps(self) -> list[dict[str, Any]]:
        """The recorded steps, in order, as dicts (``ratchet.steps`` rows)."""
        return [dict(r) for r in self.app._db.fetchall(_queries.GET_STEPS, (self.workflow_id,))]

    def get_event(self, key: str, timeout: float | None = None) -> Any:
        """This workflow's event ``key`` (see :meth:`App.get_event`)."""
        return self.app.get_event(self.workflow_id, key, timeout=timeout)

    def send(self, message: Any, topic: str | None = None,
             idempotency_key: str | None = None) -> int:
        """Send this workflow a message (see :meth:`App.send`)."""
        return self.app.send(self.workflow_id, message, topic=topic,
                             idempotency_key=idempotency_key)

"""Ratchet: durable workflow execution inside PostgreSQL.

Workflows are plain functions whose steps are checkpointed in PostgreSQL by
the ``ratchet`` extension; a worker that crashes loses nothing, and finished
steps never run again::

    import ratchet

    app = ratchet.App("postgresql:///mydb")

    @app.step(retries=3)
    def charge(order_id: int) -> str: ...

    @app.workflow()
    def checkout(order_id: int) -> str:
        receipt = charge(order_id)
        ratchet.sleep(60)          # durable: survives restarts, holds no worker
        return receipt

    handle = app.start(checkout.with_options(workflow_id="order-42"), 42)
    print(handle.result(timeout=30))

This package only calls the extension's SQL functions around your code; all
queueing, locking and recovery rules live in SQL.
"""

from __future__ import annotations

import logging

from . import aio
from ._app import App
from ._context import step_idempotency_key, workflow_id
from ._errors import (
    AsyncNotSupported,
    DuplicateDedupKey,
    InvalidArgument,
    NonDeterminismError,
    RatchetError,
    SerializationError,
    StaleRun,
    StepError,
    StepTimeout,
    WorkflowArgumentError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
)
from ._handles import WorkflowHandle
from ._install import install
from ._middleware import ExecutionInfo, Middleware
from ._patches import deprecate_patch, patched
from ._records import (
    QueueInfo,
    QueueMetrics,
    ScheduleInfo,
    StepInfo,
    WorkerInfo,
    WorkflowInfo,
    WorkflowStatus,
)
from ._steps import Step, Transaction
from ._waits import get_event, recv, set_event, sleep
from ._worker import Worker
from ._workflows import BoundWorkflow, StartOptions, Workflow
from .aio import AsyncApp

__version__ = "0.2.0"

__all__ = [
    "App",
    "AsyncApp",
    "AsyncNotSupported",
    "BoundWorkflow",
    "DuplicateDedupKey",
    "ExecutionInfo",
    "InvalidArgument",
    "Middleware",
    "QueueInfo",
    "ScheduleInfo",
    "NonDeterminismError",
    "RatchetError",
    "SerializationError",
    "StaleRun",
    "StartOptions",
    "Step",
    "QueueMetrics",
    "StepError",
    "StepInfo",
    "StepTimeout",
    "Transaction",
    "Worker",
    "WorkerInfo",
    "Workflow",
    "WorkflowArgumentError",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowStatus",
    "__version__",
    "aio",
    "deprecate_patch",
    "get_event",
    "install",
    "patched",
    "recv",
    "set_event",
    "sleep",
    "step_idempotency_key",
    "workflow_id",
]

# Public exceptions are stored (type names in error JSON) and shown as
# ratchet.X, not as the private module they are defined in.
for _cls in (AsyncNotSupported, WorkflowArgumentError, DuplicateDedupKey, InvalidArgument,
             NonDeterminismError, RatchetError, SerializationError, StaleRun, StepError,
             StepTimeout, WorkflowCancelled, WorkflowFailed, WorkflowNotFound, QueueInfo,
             QueueMetrics,
             ScheduleInfo, StepInfo, WorkerInfo, WorkflowInfo, WorkflowStatus):
    _cls.__module__ = "ratchet"

# Quiet by default, like psycopg: WARNING unless the application configures
# the "ratchet" logger.
_logger = logging.getLogger("ratchet")
if _logger.level == logging.NOTSET:
    _logger.setLevel(logging.WARNING)

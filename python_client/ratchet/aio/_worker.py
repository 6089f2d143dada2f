"""The async worker: the loop of :class:`ratchet.Worker` on an event loop.

Claim as many workflows as there are free slots in one call; run each as an
asyncio task; heartbeat, ``tick()`` and retention are tasks too. When nothing
is claimable, wait for a notification on a queue's channel or the poll
interval. Recovery needs nothing here: ``claim`` hands out workflows whose
lease expired. Finishes are written one per run (the sync worker's batched
finish, ``finish_and_claim``, is not used here yet).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import _queries
from .._app import make_worker_id
from .._listener import queue_channel
from .._worker import check_worker_options
from ._context import AsyncSubscription, AsyncWorkflowContext, subscribe
from ._runs import context_from_claim, heartbeat_loop, release, run_workflow

if TYPE_CHECKING:
    from ._app import AsyncApp

logger = logging.getLogger("ratchet")


class AsyncWorker:
    """Runs an :class:`AsyncApp`'s workflows from ``queues``, ``concurrency`` at
    a time, as tasks of the running event loop. The options are those of
    :class:`ratchet.Worker`: on SIGTERM/SIGINT (or :meth:`stop`) it stops
    claiming, lets running workflows finish for up to ``grace_period``
    seconds, then releases the rest (no attempt counted); a second signal
    skips the grace period. Cancelling :meth:`run`'s task does the same
    without the grace period."""

    #: seconds between calls to ``ratchet.tick()`` (cron schedules)
    tick_interval = 5.0
    #: batches one maintenance round runs at most
    maintenance_rounds = 20

    def __init__(self, app: AsyncApp, queues: Sequence[str] = ("default",), *,
                 concurrency: int = 16, lease: float = 30.0, poll_interval: float | None = None,
                 grace_period: float = 10.0, install_signal_handlers: bool = True,
                 worker_id: str | None = None, maintenance_interval: float | None = 60.0,
                 maintenance_batch: int = 500) -> None:
        self.app = app
        self.queues = check_worker_options(queues, concurrency, maintenance_interval,
                                           maintenance_batch)
        self.concurrency = concurrency
        self.lease = float(lease)
        self.poll_interval = app.poll_interval if poll_interval is None else poll_interval
        self.grace_period = grace_period
        self.install_signal_handlers = install_signal_handlers
        self.worker_id = worker_id or make_worker_id("aio-")
        self.maintenance_interval = maintenance_interval
        self.maintenance_batch = maintenance_batch
        #: counts of outcomes, for tests and curiosity
        self.outcomes: dict[str, int] = {}
        self._active: dict[str, tuple[AsyncWorkflowContext, asyncio.Task[None]]] = {}
        # asyncio events bind to the loop that first waits on them (3.10+),
        # so they can be made here, before run()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._force = asyncio.Event()
        self._done = asyncio.Event()
        self._started = asyncio.Event()
        self._claim_backoff = 0.0

    def __repr__(self) -> str:
        return f"<ratchet.aio.AsyncWorker {self.worker_id} queues={self.queues}>"

    # -- control ----------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (call on its loop, e.g. from a
        signal handler or another task); a second call skips the grace period."""
        if self._stopping.is_set():
            self._force.set()
        self._stopping.set()
        self._wake.set()

    @property
    def running_count(self) -> int:
        """How many workflows this worker is running now."""
        return len(self._active)

    async def wait_started(self) -> None:
        """Wait until the worker is listening and claiming."""
        await self._started.wait()

    # -- main loop ----------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped (or cancelled)."""
        loop = asyncio.get_running_loop()
        handlers: list[signal.Signals] = []
        if self.install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    handlers.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread, or no signals on this platform
        await self.app._db.ensure_size(self.concurrency + 2)
        subs: list[AsyncSubscription] = []
        background: list[asyncio.Task[Any]] = []
        try:
            for queue in self.queues:
                sub = await subscribe(self.app._listener, queue_channel(queue))
                subs.append(sub)
                background.append(asyncio.ensure_future(self._forward(sub)))
            background.append(asyncio.ensure_future(heartbeat_loop(
                self.app, self.worker_id, self.lease, self._done, lambda: list(self._active),
                self._renewed)))
            if self.maintenance_interval is not None:
                background.append(asyncio.ensure_future(self._maintenance_loop()))
            logger.info("worker %s serving %s (concurrency %d, lease %.0f s)",
                        self.worker_id, ", ".join(self.queues), self.concurrency, self.lease)
            self._started.set()
            try:
                await self._loop()
            finally:
                await asyncio.shield(self._shutdown())
        finally:
            self._stopping.set()
            self._done.set()
            for sub in subs:
                sub.close()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for sig in handlers:
                loop.remove_signal_handler(sig)
            logger.info("worker %s stopped", self.worker_id)

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.warning("worker %s got %s, shutting down%s", self.worker_id, sig.name,
                       " now" if self._stopping.is_set() else " gracefully")
        self.stop()

    async def _forward(self, sub: AsyncSubscription) -> None:
        while True:
            if await sub.wait(3600.0):
                self._wake.set()

    async def _loop(self) -> None:
        next_tick = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_tick:
                await self._tick()
                next_tick = now + self.tick_interval
            self._wake.clear()
            free = self.concurrency - self.running_count
            if free > 0 and await self._claim(free):
                continue
            timeout = min(self.poll_interval, max(0.0, next_tick - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _claim(self, count: int) -> int:
        try:
            rows = await self.app._db.fetchall(_queries.CLAIM, {
                "queues": self.queues, "worker_id": self.worker_id, "max_count": count,
                "lease": self.lease, "names": sorted(self.app._workflows),
                "app_version": self.app.app_version})
        except Exception as exc:
            self._claim_backoff = min(self.poll_interval, max(0.05, self._claim_backoff * 2))
            logger.warning("claim failed (retrying in %.2f s): %s", self._claim_backoff, exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), self._claim_backoff)
            except asyncio.TimeoutError:
                pass
            return 0
        self._claim_backoff = 0.0
        for row in rows:
            ctx = await context_from_claim(self.app, dict(row), self.worker_id, self.lease)
            if ctx is None:
                self.outcomes["undecodable"] = self.outcomes.get("undecodable", 0) + 1
                continue
            task = asyncio.ensure_future(self._run_one(ctx))
            self._active[ctx.workflow_id] = (ctx, task)
        return len(rows)

    async def _run_one(self, ctx: AsyncWorkflowContext) -> None:
        outcome = "error"
        try:
            outcome = await run_workflow(ctx)
        except asyncio.CancelledError:
            outcome = "released"  # run_workflow handed it back
            raise
        except Exception:
            logger.exception("unexpected error running workflow %s", ctx.workflow_id,
                             extra=ctx.log_extra())
            await release(ctx, "unexpected error in the worker")
        finally:
            if self._active.get(ctx.workflow_id, (None,))[0] is ctx:
                del self._active[ctx.workflow_id]
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self._wake.set()

    def _renewed(self, sent: float) -> None:
        for ctx, _ in self._active.values():
            ctx.lease_until = max(ctx.lease_until, sent + self.lease)

    async def _tick(self) -> None:
        try:
            row = await self.app._db.fetchone(_queries.TICK)
            if row and row["started"]:
                logger.info("started %s scheduled workflow(s)", row["started"])
        except Exception as exc:
            logger.warning("tick() failed: %s", exc)

    async def _maintenance_loop(self) -> None:
        assert self.maintenance_interval is not None
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.maintenance_interval)
                return
            except asyncio.TimeoutError:
                await self.maintain_once()

    async def maintain_once(self) -> int:
        """One round of retention (see :meth:`ratchet.Worker.maintain_once`)."""
        deleted = 0
        for _ in range(self.maintenance_rounds):
            try:
                row = await self.app._db.fetchone(_queries.MAINTAIN, (self.maintenance_batch,))
            except Exception as exc:
                logger.warning("maintain() failed: %s", exc)
                break
            if not row or row["skipped"]:
                break
            deleted += int(row["workflows"] or 0)
            if int(row["workflows"] or 0) < self.maintenance_batch:
                break
        if deleted:
            logger.info("retention deleted %d ended workflow(s)", deleted)
        return deleted

    async def _shutdown(self) -> None:
        deadline = time.monotonic() + self.grace_period
        if self._active:
            logger.info("waiting up to %.0f s for %d running workflow(s)",
                        self.grace_period, len(self._active))
        while self._active and time.monotonic() < deadline and not self._force.is_set():
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        left = list(self._active.values())
        for _ctx, task in left:
            task.cancel()
        if left:
            await asyncio.gather(*(t for _, t in left), return_exceptions=True)

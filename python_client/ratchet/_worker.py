"""The worker: claim, run, heartbeat, tick, shut down gracefully.

The loop is: claim as many workflows as there are free slots in one call;
run each in a thread; when nothing is claimable, wait for a notification on
one of the queues' channels or the poll interval, whichever comes first.
Recovery needs nothing here: ``claim`` itself hands out workflows whose lease
expired, with the steps already recorded.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import _queries
from ._app import make_worker_id
from ._batch import CheckpointBatcher, FinishBatcher
from ._context import WorkflowContext
from ._listener import queue_channel
from ._outcome import release
from ._runs import context_from_claim, heartbeat_loop, run_workflow

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("ratchet")

__all__ = ["Worker"]


def check_worker_options(queues: Sequence[str] | str, concurrency: int,
                         maintenance_interval: float | None,
                         maintenance_batch: int) -> list[str]:
    """The queues as a list, or ValueError for an option no worker can run with
    (the sync and async workers alike)."""
    if isinstance(queues, str):
        queues = [queues]
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if not queues:
        raise ValueError("a worker needs at least one queue")
    if maintenance_interval is not None and maintenance_interval <= 0:
        raise ValueError("maintenance_interval must be > 0 (None turns it off)")
    if maintenance_batch < 1:
        raise ValueError("maintenance_batch must be >= 1")
    return list(queues)


class _Runners:
    """The threads that run one :meth:`Worker.run`'s workflows: started as
    needed (never more than the concurrency), each runs claimed workflows one
    after another from ``queue`` (None: exit), so a workflow does not pay for
    a new thread. ``idle`` (under the worker's lock) counts the threads
    waiting for one."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[WorkflowContext | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0


class Worker:
    """Runs an app's workflows from ``queues``, ``concurrency`` at a time.

    ``lease`` (seconds) is how long a claim stays valid without a heartbeat
    (heartbeats go every ``lease / 3``); a worker that dies loses its workflows
    to other workers after that long. ``poll_interval`` bounds the wait
    between claims when no notification arrives. On SIGTERM or SIGINT (or
    :meth:`stop`) it stops claiming, lets running workflows finish for up to
    ``grace_period`` seconds, then releases the rest back to their queue so
    another worker picks them up at once (no attempt is counted). A second
    signal skips the grace period.

    Every ``maintenance_interval`` seconds (None: never) the worker runs
    retention, ``ratchet.maintain()``, in batches of ``maintenance_batch``
    rows on its own thread: only one session in the database does the work
    at a time (an advisory lock; the others skip), and a failure is logged,
    never fatal.
    """

    #: seconds between calls to ``ratchet.tick()`` (cron schedules)
    tick_interval = 5.0

    def __init__(self, app: App, queues: Sequence[str] = ("default",), *,
                 concurrency: int = 16, lease: float = 30.0, poll_interval: float | None = None,
                 grace_period: float = 10.0, install_signal_handlers: bool = True,
                 worker_id: str | None = None, maintenance_interval: float | None = 60.0,
                 maintenance_batch: int = 500, batch_finishes: bool = True,
                 batch_checkpoints: bool | None = None) -> None:
        self.app = app
        self.queues = check_worker_options(queues, concurrency, maintenance_interval,
                                           maintenance_batch)
        self.concurrency = concurrency
        self.lease = float(lease)
        self.poll_interval = app.poll_interval if poll_interval is None else poll_interval
        self.grace_period = grace_period
        self.install_signal_handlers = install_signal_handlers
        self.worker_id = worker_id or make_worker_id()
        self.maintenance_interval = maintenance_interval
        self.maintenance_batch = maintenance_batch
        #: rows deleted by this worker's maintenance, by kind (workflows, steps, ...)
        self.maintained: dict[str, int] = {}
        self._active: dict[str, WorkflowContext] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._force = threading.Event()
        self._done = threading.Event()
        self._started = threading.Event()
        self._claim_backoff = 0.0
        #: write finishes in batches with the next claim (finish_and_claim)
        self.batch_finishes = batch_finishes
        self._finisher: FinishBatcher | None = None
        #: write the checkpoints of concurrent runs in one call (record_steps);
        #: by default only from concurrency 8, where it was measured to pay
        #: (docs/benchmarks.md, "Batched checkpoints in the Python worker")
        self.batch_checkpoints = concurrency >= 8 if batch_checkpoints is None \
            else batch_checkpoints
        self._checkpointer: CheckpointBatcher | None = None
        self._claim_lock = threading.Lock()
        self._runners = _Runners()
        #: counts of outcomes, for tests and curiosity
        self.outcomes: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<ratchet.Worker {self.worker_id} queues={self.queues}>"

    # -- control ----------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (thread- and signal-safe); a
        second call skips the grace period."""
        if self._stopping.is_set():
            self._force.set()
        self._stopping.set()
        self._wake.set()

    @property
    def running_count(self) -> int:
        """How many workflows this worker is running now."""
        with self._lock:
            return len(self._active)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until the worker is listening and claiming."""
        return self._started.wait(timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`run` has returned."""
        return self._done.wait(timeout)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.warning("worker %s got %s, shutting down%s", self.worker_id,
                       signal.Signals(signum).name,
                       " now" if self._stopping.is_set() else " gracefully")
        self.stop()

    # -- main loop ----------------------------------------------------------

    def run(self) -> None:
        """Run until stopped. Blocks the calling thread."""
        previous: dict[signal.Signals, Any] = {}
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        self._done.clear()
        self._runners = _Runners()
        heartbeat = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                     name="ratchet-heartbeat")
        maintenance = threading.Thread(target=self._maintenance_loop, daemon=True,
                                       name="ratchet-maintenance")
        try:
            self.app._db.ensure_size(self.concurrency + 2)
            channels = [queue_channel(q) for q in self.queues]
            subs = [self.app._listener.subscribe(ch, None, self._notified) for ch in channels]
            self.app._listener.add_channels(channels)
            if self.batch_finishes:
                self._finisher = FinishBatcher(
                    self.app, queues=self.queues, worker_id=self.worker_id, lease=self.lease,
                    claim_count=self._batch_claim_count, on_claimed=self._spawn)
            if self.batch_checkpoints:
                self._checkpointer = CheckpointBatcher(self.app)
            heartbeat.start()
            if self.maintenance_interval is not None:
                maintenance.start()
            logger.info("worker %s serving %s (concurrency %d, lease %.0f s)",
                        self.worker_id, ", ".join(self.queues), self.concurrency, self.lease)
            self._started.set()
            try:
                self._loop()
            finally:
                for sub in subs:
                    sub.close()
                self._shutdown()
        finally:
            if self._finisher is not None:
                self._finisher.close()
            runners = self._runners
            for _ in runners.threads:  # each exits once its workflow (if any) is over
                runners.queue.put(None)
            self._stopping.set()
            self._done.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            logger.info("worker %s stopped", self.worker_id)

    def _notified(self, payload: str) -> None:
        self._wake.set()

    def _loop(self) -> None:
        next_tick = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._tick()
                next_tick = now + self.tick_interval
            self._wake.clear()
            free = self.concurrency - self.running_count
            claimed = 0
            if free > 0:
                claimed = self._claim(free)
            if claimed:
                continue  # maybe more work: claim again at once (or when a slot frees)
            self._wake.wait(min(self.poll_interval, max(0.0, next_tick - time.monotonic())))

    def _batch_claim_count(self, finishing: int) -> int:
        """How many to claim with a batch of finishes: the slots free once they
        are done (they still count as running). Holds the claim lock until
        the claimed rows are started (_spawn), so the loop does not claim the
        same slots."""
        if self._stopping.is_set():
            return 0
        self._claim_lock.acquire()
        self._batch_claiming = True
        return max(0, self.concurrency - self.running_count + finishing)

    def _claim(self, count: int) -> int:
        with self._claim_lock:
            count = min(count, self.concurrency - self.running_count)
            if count <= 0:
                return 0
            return self._claim_locked(count)

    def _claim_locked(self, count: int) -> int:
        try:
            rows = self.app._db.fetchall(_queries.CLAIM, {
                "queues": self.queues, "worker_id": self.worker_id, "max_count": count,
                "lease": self.lease,
                # only what this worker can run: during a rolling deploy a
                # workflow new workers added waits for them, costing no attempt
                "names": sorted(self.app._workflows), "app_version": self.app.app_version})
        except Exception as exc:
            # Back off from 50 ms up to the poll interval while the database is
            # unreachable; the pool has already dropped connections it lost.
            self._claim_backoff = min(self.poll_interval, max(0.05, self._claim_backoff * 2))
            logger.warning("claim failed (retrying in %.2f s): %s",
                           self._claim_backoff, exc)
            self._stopping.wait(self._claim_backoff)
            return 0
        self._claim_backoff = 0.0
        self._start(rows)
        return len(rows)

    def _spawn(self, rows: list[dict[str, Any]]) -> None:
        """Start what a batch claimed (FinishBatcher) and release the claim lock."""
        try:
            self._start(rows)
        finally:
            self._release_batch_claim()

    def _release_batch_claim(self) -> None:
        if getattr(self, "_batch_claiming", False):
            self._batch_claiming = False
            self._claim_lock.release()

    def _start(self, rows: Any) -> None:
        for row in rows:
            with self._lock:
                running = self._active.get(row["workflow_id"])
            if running is not None and running.run_id == row["run_id"]:
                # never run one run twice (a retried finish_and_claim returns
                # again only what the worker never started, but be sure)
                logger.warning("workflow %s run %s is already running here; not starting it again",
                               row["workflow_id"], row["run_id"])
                continue
            ctx = context_from_claim(self.app, dict(row), self.worker_id, self.lease)
            if ctx is None:  # undecodable: failed alone, its neighbours run
                self.outcomes["undecodable"] = self.outcomes.get("undecodable", 0) + 1
                continue
            ctx.finisher = self._finisher
            ctx.checkpointer = self._checkpointer
            runners = self._runners
            with self._lock:
                self._active[ctx.workflow_id] = ctx
                spawn = runners.idle == 0
                if not spawn:
                    runners.idle -= 1  # that thread takes this one
            runners.queue.put(ctx)
            if spawn:
                thread = threading.Thread(target=self._runner, args=(runners,), daemon=True,
                                          name="ratchet-run")
                runners.threads.append(thread)
                thread.start()

    def _runner(self, runners: _Runners) -> None:
        """A runner thread: claimed workflows one after another, each in a
        fresh context (as on a new thread: no context variable carries over)."""
        me = threading.current_thread()
        while True:
            ctx = runners.queue.get()
            if ctx is None:
                return
            me.name = f"ratchet-run-{ctx.workflow_id}"
            contextvars.Context().run(self._run_one, ctx, runners)
            me.name = "ratchet-run"

    def _run_one(self, ctx: WorkflowContext, runners: _Runners | None = None) -> None:
        outcome = "error"
        try:
            outcome = run_workflow(ctx)
        except BaseException:
            logger.exception("unexpected error running workflow %s",
                             ctx.workflow_id, extra=ctx.log_extra())
            release(ctx, "unexpected error in the worker")
        finally:
            with self._lock:
                if self._active.get(ctx.workflow_id) is ctx:
                    del self._active[ctx.workflow_id]
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                if runners is not None:  # free for the next workflow before a claim sees the slot
                    runners.idle += 1
            self._wake.set()

    def _tick(self) -> None:
        try:
            row = self.app._db.fetchone(_queries.TICK)
            if row and row["started"]:
                logger.info("started %s scheduled workflow(s)", row["started"])
        except Exception as exc:
            logger.warning("tick() failed: %s", exc)

    #: batches one maintenance round runs at most before waiting again
    maintenance_rounds = 20

    def _maintenance_loop(self) -> None:
        assert self.maintenance_interval is not None
        while not self._stopping.wait(self.maintenance_interval):
            self.maintain_once()

    def maintain_once(self) -> int:
        """One round of retention: ``maintain()`` batches while they come back
        full (bounded); returns the workflows deleted. Errors are logged."""
        deleted = 0
        for _ in range(self.maintenance_rounds):
            if self._stopping.is_set():
                break
            try:
                row = self.app._db.fetchone(_queries.MAINTAIN, (self.maintenance_batch,))
            except Exception as exc:
                logger.warning("maintain() failed: %s", exc)
                break
            if not row or row["skipped"]:
                break  # another session is maintaining
            for key in ("workflows", "steps", "events", "messages", "queue_claims"):
                self.maintained[key] = self.maintained.get(key, 0) + int(row[key] or 0)
            deleted += int(row["workflows"] or 0)
            if int(row["workflows"] or 0) < self.maintenance_batch:
                break
        if deleted:
            logger.info("retention deleted %d ended workflow(s)", deleted)
        return deleted

    def _heartbeat_loop(self) -> None:
        heartbeat_loop(self.app, self.worker_id, self.lease, self._done.wait,
                                self._running_ids, self._renewed)

    def _running_ids(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def _renewed(self, sent: float) -> None:
        """A beat sent at ``sent`` (monotonic) renewed every running lease."""
        with self._lock:
            for ctx in self._active.values():
                ctx.lease_until = max(ctx.lease_until, sent + self.lease)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.grace_period
        if self.running_count:
            logger.info("waiting up to %.0f s for %d running workflow(s)",
                        self.grace_period, self.running_count)
        while self.running_count and time.monotonic() < deadline and not self._force.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
        with self._lock:
            left = list(self._active.values())
        for ctx in left:
            release(ctx, "worker shutting down")

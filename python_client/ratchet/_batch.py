"""Batched finishes: a worker running many workflows writes the finishes that
are ready within about a millisecond (or a full batch) in one call and one
commit, ``ratchet.finish_and_claim``, which also claims workflows for the
slots those finishes free.

Each finish is fenced on its own run_id in the database and gets its own
outcome, so a stale run is dropped alone. A workflow thread waits for the
commit of its batch before it returns: nothing is reported finished before it
is durable. A database error fails every finish of that batch the way it
fails a single finish (the run is released, nothing is recorded for it); an
RT005 (one output the database refuses) sends that batch's finishes one by
one, so only the bad one sees it.

A lost connection (terminated backend, server restart) is different: the
call may or may not have committed, so the same batch is sent again as a
whole on a new connection, with backoff, while the leases of its runs hold;
a finish whose lease is about to run out gets the error instead and its run
is released, like a single fenced write past its lease
(:meth:`ratchet._db.Database.run_fenced`). Each row stays fenced on its
run_id: a row the lost call did commit is recognised by the database as this
run's own finish (``ok``); one whose run was reclaimed meanwhile gets
``stale_run``. The retry also gets back the workflows the lost call claimed,
which the worker never heard of: ``ratchet.finish_and_claim`` returns them
again (leases renewed) and claims only the slots they leave, so they are
neither held unstarted until their leases expire nor claimed twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from . import _queries
from ._errors import connection_lost

if TYPE_CHECKING:
    from ._app import App

logger = logging.getLogger("ratchet")

class _Done:
    """A one-shot signal for one waiting thread: a held lock that :meth:`set`
    releases once (a threading.Event costs a Condition and a notify_all)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:  # only the batcher's thread sets it
            self._set = True
            self._lock.release()

    def wait(self) -> None:
        self._lock.acquire()


@dataclass
class _Pending:
    workflow_id: str
    run_id: int
    output: str
    #: ``time.monotonic()`` by which the run's lease expires: sends stop then
    lease_until: float = math.inf
    done: _Done = field(default_factory=_Done)
    outcome: str | None = None
    error: psycopg.Error | None = None


class FinishBatcher:
    """Collects finishes from workflow threads and writes them in batches.

    ``claim_count(batch_size)`` says how many workflows to claim with a batch
    (0 while the worker stops); ``on_claimed(rows)`` starts them.
    """

    def __init__(self, app: App, *, queues: list[str], worker_id: str, lease: float,
                 claim_count: Callable[[int], int],
                 on_claimed: Callable[[list[dict[str, Any]]], None],
                 window: float = 0.001, max_batch: int = 100) -> None:
        self.app = app
        self.queues = queues
        self.worker_id = worker_id
        self.lease = lease
        self.claim_count = claim_count
        self.on_claimed = on_claimed
        self.window = window
        self.max_batch = max_batch
        #: batches written and finishes in them, for tests and benchmarks
        self.batches = 0
        self.finishes = 0
        #: batches sent again after a lost connection
        self.retries = 0
        self._pending: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ratchet-finisher")
        self._thread.start()

    def finish(self, workflow_id: str, run_id: int, output: str,
               lease_until: float = math.inf) -> str:
        """Finish this run in the next batch; returns its outcome (``ok``,
        ``stale_run``, ...) once the batch committed. Raises the batch's
        ``psycopg.Error`` if it did not (after a lost connection: once
        ``lease_until``, monotonic, is too close to send it again)."""
        item = _Pending(workflow_id, run_id, output, lease_until)
        with self._cond:
            if self._closed:
                raise RuntimeError("the finish batcher is closed")
            self._pending.append(item)
            self._cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return item.outcome

    def close(self) -> None:
        """Write what is pending and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                # gather what becomes ready within the window, up to a full batch
                if len(self._pending) < self.max_batch and not self._closed:
                    self._cond.wait(self.window)
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        claimed: list[dict[str, Any]] = []
        count = self.claim_count(len(batch))
        try:
            claimed = self._write_batch(batch, count)
        finally:
            self.on_claimed(claimed)  # always: it releases the worker's claim slots

    #: first and longest wait between sends of a batch cut off by a lost connection
    retry_delay = 0.05
    max_retry_delay = 1.0

    def _write_batch(self, batch: list[_Pending], count: int) -> list[dict[str, Any]]:
        delay = self.retry_delay
        while True:
            params = {
                "workflow_ids": [p.workflow_id for p in batch],
                "run_ids": [p.run_id for p in batch],
                "outputs": [p.output for p in batch], "queues": self.queues,
                "worker_id": self.worker_id, "max_count": count, "lease": self.lease,
                "names": sorted(self.app._workflows), "app_version": self.app.app_version}
            try:
                remaining = max(p.lease_until for p in batch) - time.monotonic()
                with self.app._db.connection(timeout=min(max(remaining, 0.1), 30.0)) as conn:
                    rows = self.app._db.run(conn, _queries.FINISH_AND_CLAIM, params).fetchall()
            except psycopg.Error as exc:
                if not connection_lost(exc):
                    return self._failed(batch, exc)
                # The call may have committed: send the same batch again while
                # the runs' leases hold (see the module docstring).
                now = time.monotonic()
                live = [p for p in batch if p.lease_until - now > delay]
                self._failed([p for p in batch if p not in live], exc)
                if not live:
                    return []
                self.retries += 1
                logger.info("ratchet: connection lost during a batch of %d finish(es) (%s); "
                            "sending it again in %.2f s", len(live), type(exc).__name__, delay)
                batch = live
                time.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
                continue
            except BaseException as exc:  # not a database error: the run is released
                logger.warning("batched finish failed: %s", exc)
                err = psycopg.OperationalError(f"batched finish failed: {exc}")
                return self._failed(batch, err)
            return self._written(batch, rows)

    def _failed(self, batch: list[_Pending], exc: psycopg.Error) -> list[dict[str, Any]]:
        """The batch did not commit: each finish gets the error (RT005: each is
        sent alone instead, so only the bad one fails). Claims nothing."""
        if exc.sqlstate == "RT005" and len(batch) > 1:
            for item in batch:
                self._write_one(item)
            return []
        for item in batch:
            item.error = exc
            item.done.set()
        return []

    def _written(self, batch: list[_Pending], rows: list[Any]) -> list[dict[str, Any]]:
        """The batch committed: each finish gets its outcome; returns the claims."""
        self.batches += 1
        self.finishes += len(batch)
        for r in rows:
            if r["ord"] is not None:
                batch[r["ord"] - 1].outcome = r["outcome"]
        for item in batch:
            item.done.set()
        return [dict(r) for r in rows if r["outcome"] == "claimed"]

    def _write_one(self, item: _Pending) -> None:
        try:
            with self.app._db.connection() as conn:
                self.app._db.run(conn, _queries.FINISH,
                                 (item.workflow_id, item.run_id, item.output))
            item.outcome = "ok"
        except psycopg.Error as exc:
            item.error = exc
        item.done.set()


# -- batched checkpoints ----------------------------------------------------------


@dataclass
class _Checkpoint:
    workflow_id: str
    run_id: int
    step_id: int
    name: str
    output: str | None
    error: str | None
    #: the run's lease end (time.monotonic()), read when a lost connection is retried
    lease_until: Callable[[], float]
    done: bool = False
    outcome: str | None = None
    failure: psycopg.Error | None = None
    #: held while the step's thread waits for a write in flight; released once,
    #: when its batch is written or when its thread is to write the next one
    wake: threading.Lock | None = None


class CheckpointBatcher:
    """Writes the checkpoints of a worker's runs with ``ratchet.record_steps``,
    as group commit: a step whose checkpoint finds no write in flight writes
    it at once, on its own thread (no hand-off, no wait when the worker is
    quiet), together with any that queued meanwhile; the checkpoints asked
    for while a write is in flight queue, and the thread of the first of
    them writes them all (up to ``max_batch``) in the next call when it ends.
    A queued thread sleeps on its own lock and is woken once: when its batch
    is written or when it is to write (no wake-up of every waiting thread per
    batch). Each row is fenced on its own
    run_id and gets its own outcome; no step returns before the commit of
    its batch.

    A lost connection retries the same batch on a new connection while the
    earliest lease in it holds (the database recognises rows this run already
    recorded with the same content as ``ok``); past that, every checkpoint of
    the batch gets the error and its run is released, as a single checkpoint
    would. An RT005 (one payload the database refuses) writes that batch's
    checkpoints one by one, so only the bad one sees it.
    """

    def __init__(self, app: App, *, max_batch: int = 100) -> None:
        self.app = app
        self.max_batch = max_batch
        #: calls written and checkpoints in them, for tests and benchmarks
        self.batches = 0
        self.checkpoints = 0
        self._pending: list[_Checkpoint] = []
        self._lock = threading.Lock()
        # one call in flight at a time: with more, batches shrank and the gain
        # vanished (docs/benchmarks.md)
        self._writing = False

    def record(self, workflow_id: str, run_id: int, step_id: int, name: str,
               output: str | None, error: str | None,
               lease_until: Callable[[], float]) -> str:
        """Checkpoint one step, alone or with the others waiting; returns its
        outcome (``ok``, ``stale_run``, ``duplicate``, ...) once committed.
        Raises the batch's ``psycopg.Error`` if it did not commit."""
        item = _Checkpoint(workflow_id, run_id, step_id, name, output, error, lease_until)
        with self._lock:
            if self._writing:
                # a write is in flight: queue, and sleep on this item's own lock
                # until the writer says it is done or hands this thread the next
                # write (no wake-up of every waiting step per batch)
                item.wake = threading.Lock()
                item.wake.acquire()
                self._pending.append(item)
            else:
                self._writing = True  # this thread writes the next batch
        if item.wake is not None:
            item.wake.acquire()
        if not item.done:
            # this thread writes: its item is the first one queued (or alone)
            with self._lock:
                if item.wake is None:
                    batch = [item]
                else:
                    batch = self._pending[:self.max_batch]
                    del self._pending[:self.max_batch]
            assert batch[0] is item
            try:
                self._write(batch)
            except BaseException as exc:  # never leave a waiting step behind
                for other in batch:
                    if not other.done:
                        other.failure = psycopg.OperationalError(f"batched checkpoint: {exc}")
                        other.done = True
                raise
            finally:
                self._hand_off(batch)
        if item.failure is not None:
            raise item.failure
        assert item.outcome is not None
        return item.outcome

    def _hand_off(self, batch: list[_Checkpoint]) -> None:
        """After a write: the first queued step's thread writes the next batch
        (or no write is in flight any more), then the other steps of ``batch``
        wake up (``batch[0]`` is the writer's own)."""
        with self._lock:
            following = self._pending[0] if self._pending else None
            if following is None:
                self._writing = False
        if following is not None:
            assert following.wake is not None
            following.wake.release()
        for other in batch[1:]:
            assert other.wake is not None
            other.wake.release()

    def _write(self, batch: list[_Checkpoint]) -> None:
        if len(batch) == 1:  # alone: the plain call
            self._write_one(batch[0])
            return
        params = ([c.workflow_id for c in batch], [c.run_id for c in batch],
                  [c.step_id for c in batch], [c.name for c in batch],
                  [c.output for c in batch], [c.error for c in batch])
        lease_until = min(c.lease_until() for c in batch)
        try:
            rows = self.app._db.run_fenced(_queries.RECORD_STEPS, params, lease_until,
                                           fetch="all")
        except psycopg.Error as exc:
            if exc.sqlstate == "RT005":
                for item in batch:
                    self._write_one(item)
                return
            for item in batch:
                item.failure = exc
                item.done = True
            return
        self.batches += 1
        self.checkpoints += len(batch)
        for r in rows:
            batch[r["ord"] - 1].outcome = r["outcome"]
        for item in batch:
            item.done = True

    def _write_one(self, item: _Checkpoint) -> None:
        try:
            self.app._db.run_fenced(_queries.RECORD_STEP, (
                item.workflow_id, item.run_id, item.step_id, item.name, item.output, item.error),
                item.lease_until())
            item.outcome = "ok"
        except psycopg.Error as exc:
            item.failure = exc
        self.batches += 1
        self.checkpoints += 1
        item.done = True

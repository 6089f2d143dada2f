"""The worker writes finishes in batches (finish_and_claim) without weakening
anything: every workflow ends once, a stale run in a batch is dropped alone,
and the claims that ride on a batch keep the concurrency limit."""

from __future__ import annotations

import threading
from collections import Counter


def test_finishes_are_batched_and_concurrency_holds(app, run_worker):
    lock = threading.Lock()
    running = Counter()
    gate = threading.Barrier(8, timeout=20)

    @app.workflow()
    def flow(i: int) -> int:
        with lock:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        if i < 8:
            gate.wait()  # the first 8 end together: one batch (or a few)
        with lock:
            running["now"] -= 1
        return i

    handles = [app.start(flow, i) for i in range(40)]
    worker = run_worker(concurrency=8)
    assert [h.result(timeout=30) for h in handles] == list(range(40))
    assert running["max"] <= 8
    finisher = worker._finisher
    assert finisher is not None and finisher.finishes == 40
    assert finisher.batches < 40, "no finish was batched"
    assert all(h.info()["attempts"] == 1 for h in handles)


def test_a_stale_run_in_a_batch_is_dropped_alone(app, run_worker, wait_until):
    release = threading.Event()
    entered = Counter()

    @app.workflow()
    def flow(i: int) -> int:
        entered[i] += 1
        release.wait(20)
        return i

    handles = [app.start(flow, i) for i in range(4)]
    worker = run_worker(concurrency=4)
    wait_until(lambda: len(entered) == 4, what="all four running")
    # another run takes workflow 0 over behind the worker's back
    victim = handles[0].workflow_id
    with app._db.connection() as conn:
        conn.execute("update ratchet.workflows set run_id = run_id + 1000 where workflow_id = %s",
                     [victim])
    release.set()
    assert [h.result(timeout=20) for h in handles[1:]] == [1, 2, 3]
    wait_until(lambda: worker.outcomes.get("lost") == 1, what="the stale run dropped")
    assert handles[0].info()["status"] == "running"
    assert worker.outcomes.get("succeeded") == 3


def test_batching_can_be_turned_off(app, run_worker):
    @app.workflow()
    def flow() -> str:
        return "ok"

    h = app.start(flow)
    worker = run_worker(batch_finishes=False)
    assert h.result(timeout=20) == "ok"
    assert worker._finisher is None
    assert worker.outcomes == {"succeeded": 1}


def test_checkpoints_waiting_behind_a_write_share_the_next_commit(app, run_worker, dsn,
                                                                  wait_until):
    """Group commit of checkpoints: while one checkpoint write is held (here by
    a lock the test holds on ratchet.steps), the checkpoints the other runs ask
    for wait in the batcher and then go in one record_steps call. A workflow
    cancelled meanwhile is refused alone; no step continues before its commit."""
    import psycopg

    after: Counter[int] = Counter()

    @app.step()
    def work(i: int) -> int:
        return i * 10

    @app.workflow()
    def flow(i: int) -> int:
        value = work(i)
        after[i] += 1  # reached only once the checkpoint committed
        return value

    worker = run_worker(concurrency=8)
    checkpointer = worker._checkpointer
    assert checkpointer is not None
    with psycopg.connect(dsn) as blocker:
        blocker.execute("lock table ratchet.steps in exclusive mode")
        handles = [app.start(flow, i) for i in range(8)]
        wait_until(lambda: len(checkpointer._pending) == 7, what="7 checkpoints queued")
        assert not after  # every step is waiting for its checkpoint
        victim = next(h for h in handles if any(
            c.workflow_id == h.workflow_id for c in checkpointer._pending))
        victim.cancel()
        blocker.commit()  # releases the lock: the first write, then the 7 together
    survivors = [h for h in handles if h is not victim]
    assert sorted(h.result(timeout=20) for h in survivors) == \
        sorted(int(h.info()["input"]["args"][0]) * 10 for h in survivors)
    assert victim.info()["status"] == "cancelled"
    assert checkpointer.batches == 2 and checkpointer.checkpoints == 8
    steps = {r["workflow_id"] for r in app._db.fetchall(
        "select workflow_id from ratchet.steps where name = 'work'")}
    assert steps == {h.workflow_id for h in survivors}
    assert sum(after.values()) == 7

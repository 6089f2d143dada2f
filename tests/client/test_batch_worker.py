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

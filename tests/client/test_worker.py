"""The worker: concurrency, heartbeats, graceful shutdown."""

from __future__ import annotations

import threading
import time
from collections import Counter

import ratchet


def test_concurrency_is_respected_and_all_work_is_done(app, run_worker):
    lock = threading.Lock()
    running = Counter()

    @app.step()
    def work(i: int) -> int:
        with lock:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        time.sleep(0.2)
        with lock:
            running["now"] -= 1
        return i

    @app.workflow()
    def flow(i: int) -> int:
        return work(i)

    handles = [app.start(flow, i) for i in range(8)]
    run_worker(concurrency=3)
    assert [h.result(timeout=20) for h in handles] == list(range(8))
    assert running["max"] == 3


def test_heartbeat_keeps_the_lease(app, run_worker, wait_until):
    @app.step()
    def slow() -> str:
        time.sleep(2.0)
        return "done"

    @app.workflow()
    def flow() -> str:
        return slow()

    h = app.start(flow)
    worker = run_worker(lease=0.9)
    assert h.result(timeout=15) == "done"
    assert h.info()["attempts"] == 1
    wait_until(lambda: worker.outcomes == {"succeeded": 1}, what="the outcome")


def test_graceful_stop_lets_running_workflows_finish(app, run_worker):
    started = threading.Event()

    @app.step()
    def slow() -> str:
        started.set()
        time.sleep(0.5)
        return "finished"

    @app.workflow()
    def flow() -> str:
        return slow()

    h = app.start(flow)
    worker = run_worker(grace_period=10)
    assert started.wait(10)
    worker.stop()
    assert worker.wait_stopped(10)
    assert h.status() == "succeeded"


def test_stop_releases_workflows_still_running_after_the_grace_period(app, conn, run_worker,
                                                                      wait_until):
    gate = threading.Event()
    calls = Counter()

    @app.step()
    def first() -> str:
        calls["first"] += 1
        return "first"

    @app.step()
    def blocked() -> str:
        calls["blocked"] += 1
        if calls["blocked"] == 1:
            gate.wait(20)
        return "unblocked"

    @app.workflow()
    def flow() -> list[str]:
        return [first(), blocked()]

    h = app.start(flow)
    worker = run_worker(grace_period=0.3)
    wait_until(lambda: calls["blocked"] == 1, what="the blocked step")
    worker.stop()
    assert worker.wait_stopped(10)
    # Released: back in the queue at once, attempt not counted, no worker.
    wf = h.info()
    assert wf["status"] == "enqueued" and wf["run_id"] is None and wf["worker_id"] is None
    # The abandoned thread's late checkpoint is rejected (stale run).
    gate.set()
    wait_until(lambda: worker.outcomes.get("lost") or worker.outcomes.get("released"),
               what="the old run to stop")
    assert h.steps()[1:] == []
    run_worker()
    assert h.result(timeout=10) == ["first", "unblocked"]
    assert calls["first"] == 1 and calls["blocked"] == 2


def test_a_cancelled_workflow_stops_at_its_next_write(app, run_worker, wait_until):
    calls = Counter()
    gate = threading.Event()

    @app.step()
    def step_one() -> None:
        calls["one"] += 1
        gate.wait(10)

    @app.step()
    def step_two() -> None:
        calls["two"] += 1

    @app.workflow()
    def flow() -> None:
        step_one()
        step_two()

    h = app.start(flow)
    worker = run_worker()
    wait_until(lambda: calls["one"] == 1, what="step one")
    h.cancel()
    gate.set()
    wait_until(lambda: worker.outcomes.get("lost"), what="the run to stop")
    assert calls["two"] == 0
    assert h.status() == "cancelled"


def test_worker_ids_are_unique_and_readable(app):
    a = app.worker(install_signal_handlers=False)
    b = app.worker(install_signal_handlers=False)
    assert a.worker_id != b.worker_id
    assert a.worker_id.count(":") == 2


def test_paused_queue_is_not_claimed(app, run_worker):
    app.create_queue("q")
    app.pause_queue("q")

    @app.workflow(queue="q")
    def flow() -> str:
        return "ran"

    h = app.start(flow)
    run_worker(queues=["q"])
    time.sleep(0.5)
    assert h.status() == "enqueued"
    app.resume_queue("q")
    assert h.result(timeout=10) == "ran"


def test_ratchet_logger_is_quiet_by_default():
    import logging

    assert logging.getLogger("ratchet").getEffectiveLevel() >= logging.WARNING
    assert all(hasattr(ratchet, name) for name in ratchet.__all__)

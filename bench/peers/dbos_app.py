"""DBOS Transact side of Ratchet's peer benchmark (``bench/peers/run.py``).

``python dbos_app.py prefill KIND N|trickle KIND N MS|worker W`` with the
database in ``PEERS_DSN``; KIND is ``job`` (a workflow with no step: the
job-queue workload) or ``wf3`` (three checkpointed steps). Jobs are enqueued
on queue ``bench`` with ``DBOSClient`` (no executor in that process); the
worker is one DBOS executor whose queue runs W workflows at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from dbos import DBOS, DBOSClient, DBOSConfig

DSN = os.environ["PEERS_DSN"]


@DBOS.step()
def bench_step(i: int) -> dict[str, int]:
    return {"i": i}


@DBOS.workflow(name="job")
def job() -> None:
    """The no-op job."""


@DBOS.workflow(name="wf3")
def wf3() -> dict[str, int]:
    total = 0
    for i in range(3):
        total += bench_step(i)["i"]
    return {"k": 3, "sum": total}


def enqueue(kind: str, n: int, gap_ms: int) -> None:
    client = DBOSClient(system_database_url=DSN)
    try:
        for _ in range(n):
            client.enqueue({"workflow_name": kind, "queue_name": "bench"})
            if gap_ms:
                time.sleep(gap_ms / 1000)
    finally:
        client.destroy()


def worker(concurrency: int) -> None:
    config: DBOSConfig = {"name": "ratchet-bench", "system_database_url": DSN,
                          "sys_db_pool_size": concurrency + 5, "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    # a queue's configuration lives in the system database: registered after launch
    DBOS.register_queue("bench", worker_concurrency=concurrency, polling_interval_sec=0.1)
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=0)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "worker":
        worker(int(sys.argv[2]))
    elif mode == "prefill":
        enqueue(sys.argv[2], int(sys.argv[3]), 0)
    elif mode == "trickle":
        enqueue(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

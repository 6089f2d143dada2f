"""Workflows the benchmark runs through the Python client (``bench/run.py``).

A worker process imports this module as ``bench_app:app`` (``ratchet worker
bench_app:app --queue bench``); the database comes from ``--dsn`` or
``RATCHET_DATABASE_URL``. The benchmark starts ``bench`` workflows in bulk with
``ratchet.start_workflows('bench', ...)`` and input ``{"args": [k]}``: each
runs ``k`` trivial steps, so what is measured is Ratchet's own cost per
workflow and per step checkpoint, not user code.
"""

from __future__ import annotations

import ratchet

#: the queue the benchmark's workers serve
QUEUE = "bench"
#: the workflow name the benchmark starts
WORKFLOW = "bench"

app = ratchet.App()


@app.step()
def bench_step(i: int) -> dict[str, int]:
    """A step that does nothing but return a small JSON value (checkpointed)."""
    return {"i": i}


@app.workflow(name=WORKFLOW, queue=QUEUE)
def bench(k: int) -> dict[str, int]:
    """``k`` checkpointed steps, then finish."""
    total = 0
    for i in range(k):
        total += bench_step(i)["i"]
    return {"k": k, "sum": total}

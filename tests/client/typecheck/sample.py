"""Checked by test_typing.py with mypy --strict: lines marked E must be errors."""

from typing import Any

import psycopg

import ratchet

app = ratchet.App()


@app.step(retries=2)
def charge(order_id: int) -> str:
    return "x"


@app.transaction()
def reserve(cur: psycopg.Cursor[Any], order_id: int) -> None:
    cur.execute("select 1")


@app.workflow()
def checkout(order_id: int, note: str = "") -> str:
    reserve(order_id)
    return charge(order_id)


handle: ratchet.WorkflowHandle[str] = app.start(checkout.with_options(workflow_id="order-42"),
                                                 42)
text: str = handle.result(timeout=3)
app.start(checkout, 42)
app.start(checkout.with_options(queue="q", delay=5), 42, note="n")
options = ratchet.StartOptions(queue="q", priority=5)
bound: ratchet.BoundWorkflow[[int, str], str] = checkout.with_options(options)
app.start(bound.with_options(dedup_key="d"), 42, "n")
by_name: ratchet.WorkflowHandle[Any] = app.start("checkout", 42, queue="q")
direct: str = checkout(1)
direct_bound: str = checkout.with_options(workflow_id="x")(1)
app.start(checkout, "not an int")  # E
app.start(checkout.with_options(queue="q"), "not an int")  # E
app.start(checkout.with_options(queue="q"), 42, queue="q")  # E
app.start(checkout, 42, workflow_id="order-42")  # E
checkout.with_options(priority="high")  # E
reserve("not an int")  # E
charge(1, 2)  # E
wrong: int = handle.result()  # E

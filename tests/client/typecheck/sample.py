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


handle: ratchet.WorkflowHandle[str] = app.start(checkout, 42, workflow_id="order-42")
text: str = handle.result(timeout=3)
app.start(checkout, 42)
app.start(checkout, 42, note="n", queue="q", delay=5)
direct: str = checkout(1)
app.start(checkout, "not an int")  # E
reserve("not an int")  # E
charge(1, 2)  # E
wrong: int = handle.result()  # E

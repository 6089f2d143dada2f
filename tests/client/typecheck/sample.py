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

# -- the async client ---------------------------------------------------------

aapp = ratchet.AsyncApp()


@aapp.step(retries=2)
async def acharge(order_id: int) -> str:
    return "x"


@aapp.step()
def blocking_lookup(order_id: int) -> int:  # a plain step: run in a thread, still awaited
    return order_id


@aapp.transaction()
async def areserve(cur: psycopg.AsyncCursor[Any], order_id: int) -> None:
    await cur.execute("select 1")


@aapp.workflow()
async def acheckout(order_id: int, note: str = "") -> str:
    await areserve(order_id)
    looked_up: int = await blocking_lookup(order_id)
    await ratchet.aio.sleep(looked_up)
    return await acharge(order_id)


async def use_async_client() -> None:
    ahandle: ratchet.aio.AsyncWorkflowHandle[str] = await aapp.start(
        acheckout.with_options(workflow_id="order-43"), 43)
    atext: str = await ahandle.result(timeout=3)
    adirect: str = await acheckout(1)
    await aapp.start(acheckout, "not an int")  # E
    await acharge("not an int")  # E
    awrong: int = await ahandle.result()  # E
    print(atext, adirect, awrong)

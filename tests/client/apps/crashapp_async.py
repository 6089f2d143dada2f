"""The workflows of crashapp.py for the async client (ratchet.AsyncApp), run
by real worker subprocesses (`ratchet worker crashapp_async:app`): the same
names, effects and barriers, so tests/client/test_crash.py runs every crash
scenario against both clients."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
from crashapp import BARRIER, BLOCK_AT

import ratchet
from ratchet import aio

app = ratchet.AsyncApp(poll_interval=0.2)


async def block(point: str) -> None:
    """Stop here (in the worker told to) until the test releases the barrier."""
    if BLOCK_AT != point:
        return
    (BARRIER / point).touch()
    while not (BARRIER / "release").exists():
        await asyncio.sleep(0.02)


async def effect(what: str) -> None:
    async with app.connection() as conn:
        await conn.execute(
            "insert into crash_effects (workflow_id, what, pid) values (%s, %s, %s)",
            (ratchet.workflow_id(), what, os.getpid()))


@app.step()
async def s1(n: int) -> int:
    await effect("s1")
    return n + 1


@app.step()
async def s2(n: int) -> int:
    await effect("s2")
    return n * 2


@app.transaction()
async def tx(cur: psycopg.AsyncCursor[Any], n: int) -> str:
    await cur.execute("insert into crash_effects (workflow_id, what, pid) "
                      "values (%s, 'tx', %s)", (ratchet.workflow_id(), os.getpid()))
    await block("tx")
    return f"tx-{n}"


@app.step()
async def s3(label: str) -> str:
    await effect("s3")
    return label.upper()


@app.workflow()
async def pipeline(n: int) -> list[Any]:
    a = await s1(n)
    b = await s2(a)
    await block("between")
    c = await tx(b)
    return [a, b, c, await s3(c)]


@app.workflow()
async def waiter() -> Any:
    message = await aio.recv("go", timeout=120)
    await effect(f"received {message}")
    return message


@app.workflow()
async def sleeper(seconds: float) -> str:
    await s1(0)
    await aio.sleep(seconds)
    await effect("woke")
    return "rested"


@app.workflow()
async def child(n: int) -> int:
    await effect("child")
    await block("child")
    return n * 10


@app.workflow()
async def parent(n: int) -> int:
    handle = await app.start(child, n)
    return int(await handle.result()) + 1

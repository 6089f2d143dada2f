"""The same workflows written for both clients, for test_both_clients.py:
``register_sync(app, seen)`` on a ``ratchet.App`` and ``register_async(app,
seen)`` on a ``ratchet.AsyncApp`` define workflows of the same names and
behaviour; ``seen`` (a Counter) counts every real execution of a step body,
so a test can tell a replay from a second run."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import ratchet
from ratchet import aio


def register_sync(app: ratchet.App, seen: Counter[str]) -> None:
    @app.step(retries=2, interval=0.01, backoff=1.0)
    def flaky(n: int) -> int:
        seen["flaky"] += 1
        if seen["flaky"] < 3:
            raise ConnectionError(f"try {seen['flaky']}")
        return n + 1

    @app.step(timeout=0.2)
    def slow() -> None:
        seen["slow"] += 1
        time.sleep(3)

    @app.step()
    def broken() -> None:
        seen["broken"] += 1
        raise ValueError("bad input")

    @app.transaction()
    def insert_then_fail(cur: Any, tag: str) -> None:
        cur.execute("insert into flow_effects (tag) values (%s)", (tag,))
        raise RuntimeError("after the insert")

    @app.transaction()
    def insert(cur: Any, tag: str) -> int:
        cur.execute("insert into flow_effects (tag) values (%s) returning id", (tag,))
        return int(cur.fetchone()[0])

    @app.workflow()
    def retrying(n: int) -> int:
        return flaky(n)

    @app.workflow()
    def catches() -> list[str]:
        caught = []
        try:
            slow()
        except ratchet.StepTimeout:
            caught.append("StepTimeout")
        try:
            broken()
        except ratchet.StepError as exc:
            caught.append(f"StepError:{exc.type}")
        try:
            insert_then_fail("rolled-back")
        except ratchet.StepError as exc:
            caught.append(f"StepError:{exc.type}")
        insert("kept")
        return caught

    @app.workflow()
    def conversation() -> Any:
        ratchet.set_event("state", "waiting")
        message = ratchet.recv("greeting", timeout=30)
        ratchet.set_event("state", f"got {message}")
        return message

    @app.workflow()
    def long_sleep(seconds: float) -> str:
        seen["before sleep"] += 1
        ratchet.sleep(seconds)
        seen["after sleep"] += 1
        return "awake"

    @app.workflow()
    def kid(n: int) -> int:
        seen["kid"] += 1
        return n * 10

    @app.workflow()
    def parent(n: int) -> int:
        started = app.start(kid, n).result()
        called = kid(n + 1)
        return int(started) + int(called)

    @app.workflow()
    def two_args(a: int, b: int) -> int:
        return a + b

    @app.workflow()
    def versioned() -> str:
        return "new" if ratchet.patched("v2") else "old"


def register_async(app: ratchet.AsyncApp, seen: Counter[str]) -> None:
    @app.step(retries=2, interval=0.01, backoff=1.0)
    async def flaky(n: int) -> int:
        seen["flaky"] += 1
        if seen["flaky"] < 3:
            raise ConnectionError(f"try {seen['flaky']}")
        return n + 1

    @app.step(timeout=0.2)
    async def slow() -> None:
        seen["slow"] += 1
        await asyncio.sleep(3)

    @app.step()
    def broken() -> None:  # a plain def step of an AsyncApp runs in a thread
        seen["broken"] += 1
        raise ValueError("bad input")

    @app.transaction()
    async def insert_then_fail(cur: Any, tag: str) -> None:
        await cur.execute("insert into flow_effects (tag) values (%s)", (tag,))
        raise RuntimeError("after the insert")

    @app.transaction()
    async def insert(cur: Any, tag: str) -> int:
        await cur.execute("insert into flow_effects (tag) values (%s) returning id", (tag,))
        return int((await cur.fetchone())[0])

    @app.workflow()
    async def retrying(n: int) -> int:
        return await flaky(n)

    @app.workflow()
    async def catches() -> list[str]:
        caught = []
        try:
            await slow()
        except ratchet.StepTimeout:
            caught.append("StepTimeout")
        try:
            await broken()
        except ratchet.StepError as exc:
            caught.append(f"StepError:{exc.type}")
        try:
            await insert_then_fail("rolled-back")
        except ratchet.StepError as exc:
            caught.append(f"StepError:{exc.type}")
        await insert("kept")
        return caught

    @app.workflow()
    async def conversation() -> Any:
        await aio.set_event("state", "waiting")
        message = await aio.recv("greeting", timeout=30)
        await aio.set_event("state", f"got {message}")
        return message

    @app.workflow()
    async def long_sleep(seconds: float) -> str:
        seen["before sleep"] += 1
        await aio.sleep(seconds)
        seen["after sleep"] += 1
        return "awake"

    @app.workflow()
    async def kid(n: int) -> int:
        seen["kid"] += 1
        return n * 10

    @app.workflow()
    async def parent(n: int) -> int:
        started = await (await app.start(kid, n)).result()
        called = await kid(n + 1)
        return int(started) + int(called)

    @app.workflow()
    async def two_args(a: int, b: int) -> int:
        return a + b

    @app.workflow()
    async def versioned() -> str:
        return "new" if await aio.patched("v2") else "old"

"""One workflow in two versions, for the safe-code-change test.

``PATCH_VERSION=1`` is the old code: ``a``, ``old_step``, then ``hang`` (which
touches ``$PATCH_BARRIER_DIR/hang`` and blocks, so the test can kill -9 the
worker with steps 0 and 1 recorded). ``PATCH_VERSION=2`` is the new code: the
old branch is kept behind ``ratchet.patched("x")``. Every step that really
runs appends a row to ``crash_effects``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ratchet

app = ratchet.App(poll_interval=0.2)

VERSION = os.environ.get("PATCH_VERSION", "2")
BARRIER = Path(os.environ.get("PATCH_BARRIER_DIR", "/nonexistent"))


def effect(what: str) -> None:
    with app.connection() as conn:
        conn.execute("insert into crash_effects (workflow_id, what, pid) values (%s, %s, %s)",
                     (ratchet.workflow_id(), what, os.getpid()))


@app.step()
def a(n: int) -> int:
    effect("a")
    return n


@app.step()
def old_step(n: int) -> str:
    effect("old_step")
    return f"old-{n}"


@app.step()
def new_step(n: int) -> str:
    effect("new_step")
    return f"new-{n}"


@app.step()
def hang() -> None:
    effect("hang")
    (BARRIER / "hang").touch()
    while True:
        time.sleep(0.05)


@app.step()
def finish() -> None:
    effect("finish")


if VERSION == "1":
    @app.workflow(name="order")
    def order_v1(n: int) -> str:
        a(n)
        out = old_step(n)
        hang()
        return out
else:
    @app.workflow(name="order")
    def order_v2(n: int) -> str:
        a(n)
        out = new_step(n) if ratchet.patched("x") else old_step(n)
        finish()
        return out

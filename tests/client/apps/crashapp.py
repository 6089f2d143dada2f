"""Workflows for the crash tests, run by real worker subprocesses.

``CRASH_BLOCK_AT`` makes a worker stop at a known point and wait for the file
``$CRASH_BARRIER_DIR/release``, after touching ``$CRASH_BARRIER_DIR/<point>``
(so the test knows it got there): ``between`` (between two steps),
``tx`` (inside a transactional step, after its insert), ``child`` (inside the
child workflow). Workers started without it never block. Every step appends a
row to ``crash_effects`` when it really runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psycopg

import ratchet

app = ratchet.App(poll_interval=0.2)

BLOCK_AT = os.environ.get("CRASH_BLOCK_AT", "")
BARRIER = Path(os.environ.get("CRASH_BARRIER_DIR", "/nonexistent"))

EFFECTS_TABLE = """create table if not exists crash_effects (
  id bigserial primary key, workflow_id text not null, what text not null,
  pid int not null, at timestamptz not null default clock_timestamp())"""


def block(point: str) -> None:
    """Stop here (in the worker told to) until the test releases the barrier."""
    if BLOCK_AT != point:
        return
    (BARRIER / point).touch()
    while not (BARRIER / "release").exists():
        time.sleep(0.02)


def effect(what: str) -> None:
    with app.connection() as conn:
        conn.execute("insert into crash_effects (workflow_id, what, pid) values (%s, %s, %s)",
                     (ratchet.workflow_id(), what, os.getpid()))


@app.step()
def s1(n: int) -> int:
    effect("s1")
    return n + 1


@app.step()
def s2(n: int) -> int:
    effect("s2")
    return n * 2


@app.transaction()
def tx(cur: psycopg.Cursor[Any], n: int) -> str:
    cur.execute("insert into crash_effects (workflow_id, what, pid) values (%s, 'tx', %s)",
                (ratchet.workflow_id(), os.getpid()))
    block("tx")
    return f"tx-{n}"


@app.step()
def s3(label: str) -> str:
    effect("s3")
    return label.upper()


@app.workflow()
def pipeline(n: int) -> list[Any]:
    a = s1(n)
    b = s2(a)
    block("between")
    c = tx(b)
    return [a, b, c, s3(c)]


@app.workflow()
def waiter() -> Any:
    message = ratchet.recv("go", timeout=120)
    effect(f"received {message}")
    return message


@app.workflow()
def sleeper(seconds: float) -> str:
    s1(0)
    ratchet.sleep(seconds)
    effect("woke")
    return "rested"


@app.workflow()
def child(n: int) -> int:
    effect("child")
    block("child")
    return n * 10


@app.workflow()
def parent(n: int) -> int:
    handle = app.start(child, n)
    return int(handle.result()) + 1

"""The application the chaos workers run (``tests.chaos.chaos_app:app``).

Only the public client API is used. Each ``chaos_flow`` workflow is a short
chain whose every step result is a pure function of the workflow's input, so
the harness can tell a correct end state from a wrong one:

====  ======================  ================================================
step  name                    what it does
====  ======================  ================================================
0     ``compute``             plain step: ``7 n + 3`` (after ``work_ms`` of "work",
                              so that faults find steps in flight)
1     ``apply_effect``        transactional step: inserts one row into the user
                              table ``chaos_effects`` (no unique constraint, so a
                              double application would show as two rows)
2     ``call_external``       at-least-once step: "calls an external API", i.e.
                              appends ``(idempotency_key, called_at, pid)`` to
                              ``chaos_calls`` on its own autocommit connection;
                              sometimes the "response is lost" (it raises after
                              the call) and the step is retried
(3)   ``sleep``               ``ratchet.sleep(sleep)`` when the input asks for it
                              (longer than the app's suspend threshold: the
                              workflow suspends and resumes on any worker)
(..)  ``start:chaos_child``,  a child workflow (deterministic id ``<id>:<step>``)
      ``result``              when the input asks for it; the child has its own
                              plain step and transactional step
last  ``summarize``           plain step combining the results (``work_ms`` again)
====  ======================  ================================================

The expected step list, outputs and workflow output are computed by
:func:`expected_steps` / :func:`expected_output`, shared with the harness.

Environment (set by the harness for each worker process):
``CHAOS_EXT_DSN`` the connection string of the "external API" connection;
``CHAOS_SEED`` seeds the simulated lost responses; ``CHAOS_TX_RETRIES`` the
retries of the transactional steps (default 0, the client's default).
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from typing import Any

import psycopg

import ratchet

QUEUE = "chaos"
#: waits longer than this release the worker (sleeps in the chaos flows are longer)
SUSPEND_THRESHOLD = 0.4
#: probability that the external call's "response is lost" after the call was made
LOST_RESPONSE_RATE = 0.08
#: retries of the transactional steps: 0 (the client's default) unless the harness
#: says otherwise; a lost connection must not fail a transactional step for good
TX_RETRIES = int(os.environ.get("CHAOS_TX_RETRIES", "0"))

app = ratchet.App(suspend_threshold=SUSPEND_THRESHOLD, poll_interval=0.5)

_SEED = os.environ.get("CHAOS_SEED", "0")
_local = threading.local()
_counter_lock = threading.Lock()
_call_counts: dict[str, int] = {}


# -- expected results (shared with the harness) -------------------------------------


def compute_value(n: int) -> int:
    return 7 * n + 3


def child_value(n: int) -> int:
    return n * n + 1


def expected_output(inp: dict[str, Any]) -> dict[str, Any]:
    """The output of ``chaos_flow(**inp)``."""
    n = int(inp["n"])
    child = child_value(n) if inp.get("child") else None
    return {"n": n, "value": compute_value(n), "child": child,
            "total": compute_value(n) + n + (child or 0)}


def expected_steps(workflow_id: str, inp: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(name, output)`` of each step of ``chaos_flow``, in order; output
    ``...`` (Ellipsis) means "any object" (a sleep's recorded wake time)."""
    n = int(inp["n"])
    steps: list[tuple[str, Any]] = [
        ("compute", compute_value(n)),
        ("apply_effect", {"row": n}),
        ("call_external", {"key": f"{workflow_id}:2"}),
    ]
    if inp.get("sleep"):
        steps.append(("sleep", ...))
    if inp.get("child"):
        child_id = f"{workflow_id}:{len(steps)}"
        steps.append(("start:chaos_child", {"child_id": child_id}))
        steps.append(("result", child_value(n)))
    out = expected_output(inp)
    steps.append(("summarize", out))
    return steps


def expected_child_steps(n: int) -> list[tuple[str, Any]]:
    return [("child_square", child_value(n)), ("child_effect", {"row": n})]


# -- the "external API" -------------------------------------------------------------


def _external_conn() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        dsn = os.environ.get("CHAOS_EXT_DSN") or os.environ.get("RATCHET_DATABASE_URL", "")
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def _external_call(key: str) -> None:
    try:
        _external_conn().execute(
            "insert into chaos_calls (idempotency_key, called_at, pid) "
            "values (%s, clock_timestamp(), %s)", (key, os.getpid()))
    except psycopg.Error:
        conn = getattr(_local, "conn", None)
        if conn is not None:
            conn.close()
        _local.conn = None
        raise


# -- the execution log -----------------------------------------------------------
#
# Every step body logs its start and its end (returned or raised) to
# chaos_executions on the "external" autocommit connection, outside the step's
# transaction, so the harness can count how often a body ran and why it ran
# again. Best effort: a fault that breaks the logging connection loses a log
# row, never changes the step.


def _log(query: str, params: Any) -> Any:
    """Run one logging statement, on a new connection after a fault (a few tries)."""
    for wait in (0.2, 0.5, 1.0, None):
        try:
            return _external_conn().execute(query, params).fetchone()
        except psycopg.Error:
            _drop_external()
            if wait is None:
                return None
            time.sleep(wait)
    return None


def _log_start(name: str) -> int | None:
    row = _log("insert into chaos_executions (idempotency_key, name, pid) values (%s, %s, %s) "
               "returning id", (ratchet.step_idempotency_key(), name, os.getpid()))
    return int(row[0]) if row else None


def _log_end(log_id: int | None, outcome: str) -> None:
    if log_id is not None:
        _log("update chaos_executions set outcome = %s, ended_at = clock_timestamp() "
             "where id = %s returning id", (outcome, log_id))


def _drop_external() -> None:
    conn = getattr(_local, "conn", None)
    if conn is not None:
        conn.close()
    _local.conn = None


def logged(name: str) -> Any:
    """Decorate a step body so that its executions are logged."""
    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            log_id = _log_start(name)
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                _log_end(log_id, "raised")
                raise
            _log_end(log_id, "returned")
            return result
        return body
    return wrap


# -- steps ------------------------------------------------------------------------


@app.step(name="compute", retries=3, interval=0.1)
@logged("compute")
def compute(n: int, work_ms: int) -> int:
    time.sleep(work_ms / 1000.0)
    return compute_value(n)


def _insert_effect(cur: psycopg.Cursor[Any], n: int) -> dict[str, int]:
    """The transactional effect the checks count: one row per (workflow, step)."""
    key = ratchet.step_idempotency_key()
    wf, _, step = key.rpartition(":")
    cur.execute("insert into chaos_effects (workflow_id, step_id, value, pid) "
                "values (%s, %s, %s, %s)", (wf, int(step), n, os.getpid()))
    return {"row": n}


@app.transaction(name="apply_effect", retries=TX_RETRIES, interval=0.2, max_delay=2.0)
@logged("apply_effect")
def apply_effect(cur: psycopg.Cursor[Any], n: int) -> dict[str, int]:
    return _insert_effect(cur, n)


@app.step(name="call_external", retries=12, interval=0.1, backoff=2.0, max_delay=1.0)
@logged("call_external")
def call_external(n: int) -> dict[str, str]:
    key = ratchet.step_idempotency_key()
    _external_call(key)
    with _counter_lock:
        count = _call_counts.get(key, 0) + 1
        _call_counts[key] = count
    if random.Random(f"{_SEED}:{key}:{os.getpid()}:{count}").random() < LOST_RESPONSE_RATE:
        raise ConnectionResetError(f"simulated lost response from the external API ({key})")
    return {"key": key}


@app.step(name="summarize", retries=3, interval=0.1)
@logged("summarize")
def summarize(n: int, value: int, child: int | None, work_ms: int) -> dict[str, Any]:
    time.sleep(work_ms / 1000.0)
    return {"n": n, "value": value, "child": child, "total": value + n + (child or 0)}


@app.step(name="child_square", retries=3, interval=0.1)
@logged("child_square")
def child_square(n: int) -> int:
    return child_value(n)


@app.transaction(name="child_effect", retries=TX_RETRIES, interval=0.2, max_delay=2.0)
@logged("child_effect")
def child_effect(cur: psycopg.Cursor[Any], n: int) -> dict[str, int]:
    return _insert_effect(cur, n)


# -- workflows ----------------------------------------------------------------------


@app.workflow(name="chaos_child", queue=QUEUE, max_attempts=30)
def chaos_child(n: int) -> int:
    value = child_square(n)
    child_effect(n)
    return value


@app.workflow(name="chaos_flow", queue=QUEUE)
def chaos_flow(n: int, work_ms: int = 0, sleep: float = 0.0, child: bool = False,
               ) -> dict[str, Any]:
    value = compute(n, work_ms)
    apply_effect(n)
    call_external(n)
    if sleep:
        ratchet.sleep(sleep)
    child_out = chaos_child(n) if child else None
    return summarize(n, value, child_out, work_ms)

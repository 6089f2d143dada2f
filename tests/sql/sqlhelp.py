"""Helpers shared by the SQL-level tests (plain SQL through psycopg)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest


@contextmanager
def raises_sqlstate(code: str) -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    """Expect a database error with this SQLSTATE, and a message and hint."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    assert info.value.sqlstate == code, f"expected {code}, got {info.value.sqlstate}: {info.value}"
    diag = info.value.diag
    assert diag.message_primary, "error without a message"
    if code.startswith("RT"):
        assert diag.message_hint, f"RT error without a hint: {diag.message_primary}"


def start(conn: psycopg.Connection[Any], name: str = "wf", **kw: Any) -> str:
    """Start a workflow with named arguments; returns its id."""
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    query = f"select ratchet.start_workflow(%(name)s{', ' if args else ''}{args}) as id"
    row = conn.execute(query, {"name": name, **kw}).fetchone()
    assert row is not None
    return str(row["id"])


def claim(
    conn: psycopg.Connection[Any],
    queues: list[str] | None = None,
    worker: str = "w1",
    n: int = 1,
    lease: str = "30 seconds",
) -> list[dict[str, Any]]:
    """claim() as a list of dict rows."""
    return conn.execute(
        "select * from ratchet.claim(%s, %s, %s, %s::interval)",
        [queues or ["default"], worker, n, lease],
    ).fetchall()


def set_now(conn: psycopg.Connection[Any], ts: str | None) -> None:
    """Move this session's ratchet.now() (None: back to the real clock)."""
    conn.execute("select set_config('ratchet.fake_now', %s, false)", [ts or ""])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll predicate until it holds or timeout passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)

"""Fixtures for the SQL-level tests: they drive the extension with plain SQL only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest


@pytest.fixture
def one(conn: psycopg.Connection[Any]) -> Callable[..., Any]:
    """one(sql, params) -> the single value of the single row."""

    def run(query: str, params: Any = None) -> Any:
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return next(iter(row.values()))

    return run

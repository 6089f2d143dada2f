"""docs/sql-api.md is executable: every ```sql block runs, in order, in one session.

A tiny psql emulation: statements end with ';' or with psql's '\\gset' (which
stores the row's columns as variables), ':name' and ':'name'' substitute
variables, and a block containing '-- fails with RTnnn' must raise exactly
that SQLSTATE.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlhelp import raises_sqlstate

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql-api.md"
BLOCK = re.compile(r"```sql\n(.*?)```", re.S)
EXPECT = re.compile(r"-- fails with (RT\d{3})")


def blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text())


def statements(block: str) -> list[tuple[str, bool]]:
    """Split a block into (statement, gset) pairs."""
    out: list[tuple[str, bool]] = []
    current: list[str] = []
    for line in block.splitlines():
        if line.strip().startswith("--") and not current:
            continue
        current.append(line)
        stripped = line.rstrip()
        if stripped.endswith("\\gset"):
            current[-1] = stripped[: -len("\\gset")]
            out.append(("\n".join(current), True))
            current = []
        elif stripped.endswith(";"):
            out.append(("\n".join(current), False))
            current = []
    assert not "".join(current).strip(), f"unterminated statement: {current}"
    return out


def substitute(sql: str, variables: dict[str, Any]) -> str:
    def quoted(m: re.Match[str]) -> str:
        return "'" + str(variables[m.group(1)]).replace("'", "''") + "'"

    def raw(m: re.Match[str]) -> str:
        return str(variables[m.group(1)])

    sql = re.sub(r"(?<![:\w]):'(\w+)'", quoted, sql)
    return re.sub(r"(?<![:\w]):([a-z_]+)\b", raw, sql)


def test_the_doc_has_a_walkthrough() -> None:
    assert len(blocks()) >= 20


def test_sql_api_doc_runs_top_to_bottom(conn: psycopg.Connection[Any]) -> None:
    variables: dict[str, Any] = {}
    for number, block in enumerate(blocks(), 1):
        expected = EXPECT.search(block)
        for sql, gset in statements(block):
            query = substitute(sql, variables)
            if expected:
                with raises_sqlstate(expected.group(1)):
                    conn.execute(query)
                continue
            try:
                cur = conn.execute(query)
            except psycopg.Error as exc:
                pytest.fail(f"block {number} failed: {query}\n{exc}")
            if gset:
                row = cur.fetchone()
                assert row is not None, f"block {number}: \\gset got no row: {query}"
                for key, value in row.items():
                    variables[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            elif cur.description and cur.rowcount == 1:
                row = cur.fetchone()
                # statements that check a property of the walk-through return booleans
                for key, value in (row or {}).items():
                    if isinstance(value, bool):
                        assert value, f"block {number}: {key} is false in {query}"
    # the walk-through's end state, as the doc describes it
    final = conn.execute(
        "select workflow_id, status from ratchet.workflows"
        " where workflow_id in ('order-42', 'sync-1', 'approve-7', 'batch-1', 'batch-1:0')"
        " order by 1"
    ).fetchall()
    assert final == [
        {"workflow_id": "approve-7", "status": "succeeded"},
        {"workflow_id": "batch-1", "status": "enqueued"},
        {"workflow_id": "batch-1:0", "status": "cancelled"},
        {"workflow_id": "order-42", "status": "succeeded"},
        {"workflow_id": "sync-1", "status": "succeeded"},
    ]

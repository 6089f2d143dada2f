"""The dashboard's queries use indexes, never a scan of the workflows table
(except the counts by status, which the dashboard caches when slow).

The table is filled with the benchmark's synthetic rows (bench/ui_bench.py:
200k workflows in every status); the plans are the ones PostgreSQL picks
after ANALYZE. bench/ui_bench.py measures the same queries with 1M rows.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = 200_000


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("ui_bench", ROOT / "bench" / "ui_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    out = [(plan["Node Type"], plan.get("Index Name") or plan.get("Relation Name") or "")]
    for child in plan.get("Plans", []):
        out += scans(child)
    return out


@pytest.fixture
def filled(conn: psycopg.Connection[Any]) -> Any:
    bench = _bench()
    conn.execute(bench.FILL, {"rows": ROWS})
    conn.execute(bench.STEPS, {"rows": ROWS})
    conn.execute("analyze ratchet.workflows")
    conn.execute("analyze ratchet.steps")
    return bench


def test_dashboard_reads_use_indexes(conn: psycopg.Connection[Any], filled: Any) -> None:
    checked = 0
    for label, sql, params in filled.cases(conn, ROWS):
        if label == "overview: counts by status":
            continue  # one scan by design; cached by the dashboard when slow
        row = conn.execute("explain (format json) " + sql, params).fetchone()
        assert row is not None
        found = scans(row["QUERY PLAN"][0]["Plan"])
        seq = [name for node, name in found if node == "Seq Scan"]
        assert "workflows" not in seq and "steps" not in seq, (label, found)
        checked += 1
    assert checked >= 15


def test_list_pages_walk_the_created_index(conn: psycopg.Connection[Any], filled: Any) -> None:
    for label, sql, params in filled.cases(conn, ROWS):
        if label.startswith("list:") and "id search" not in label:
            row = conn.execute("explain (format json) " + sql, params).fetchone()
            assert row is not None
            names = [name for _, name in scans(row["QUERY PLAN"][0]["Plan"])]
            assert "workflows_created_idx" in names, (label, names)


def test_queue_stats_view_reads_the_partial_indexes(conn: psycopg.Connection[Any],
                                                    filled: Any) -> None:
    row = conn.execute("explain (format json) select * from ratchet.queue_stats").fetchone()
    assert row is not None
    found = scans(row["QUERY PLAN"][0]["Plan"])
    assert ("Seq Scan", "workflows") not in found, found

"""``make bench`` must keep working: a quick run of the latency and claim-cost
sections writes a report with every latency row measured (not a timing test:
the figures themselves are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "latency,claim",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert "## 4. Latencies" in report
    for row in ("enqueue -> claim (SQL API)", "send -> LISTENing recv() returned it",
                "set_event -> LISTENing get_event() returned it",
                "Python: send -> recv -> set_event -> get_event"):
        line = next(line for line in report.splitlines() if line.startswith(f"| {row} |"))
        assert "not measured" not in line, line
    assert "Python rows not measured" not in report
    assert "| 2,000 |" in report  # the claim-cost table at the deeper queue


@pytest.mark.slow
def test_quick_peers_benchmark_measures_ratchet(tmp_path: Path) -> None:
    """``make bench-peers`` must keep working: a quick run of Ratchet alone (the
    peers are optional) fills its rows and keeps the text around the markers."""
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nbefore\n\n<!-- peers:begin -->\nold\n"
                   "<!-- peers:end -->\n\nafter\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers" / "run.py"), "--quick",
         "--tools", "ratchet-py,ratchet-sql", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("# Benchmarks\n\nbefore\n") and report.endswith("after\n")
    assert "\nold\n" not in report and report.count("<!-- peers:begin -->") == 1
    for tool in ("Ratchet (Python client)", "Ratchet (SQL API, pgbench)"):
        rows = [line for line in report.splitlines() if line.startswith(f"| {tool} |")]
        assert len(rows) >= 4, rows  # version, jobs, wf3, commits tables
        assert not any("not measured" in row for row in rows), rows
    assert "NOT MEASURED" not in proc.stderr

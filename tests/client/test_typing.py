"""The public API is typed: mypy checks workflow arguments through app.start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "typecheck" / "sample.py"


def test_mypy_checks_workflow_and_step_arguments():
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent",
         str(SAMPLE)],
        capture_output=True, text=True, timeout=300, cwd=str(HERE.parent.parent),
        env={"MYPYPATH": str(HERE.parent.parent / "python_client"), "PATH": "/usr/bin:/bin"})
    flagged = {int(line.split(":")[1]) for line in proc.stdout.splitlines()
               if ": error:" in line}
    expected = {n for n, line in enumerate(SAMPLE.read_text().splitlines(), 1)
                if line.rstrip().endswith("# E")}
    assert flagged == expected, proc.stdout

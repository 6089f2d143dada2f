"""Build hook: the package's SQL scripts are generated, not committed.

Every build of the Python package (``pip install .``, ``pip install -e .``,
``pip wheel .``, ``python -m build``) first runs ``sh sql/build.sh all`` to
write the install and upgrade scripts into ``python_client/ratchet/_sql/``,
where ``ratchet install`` reads them with importlib.resources; the wheel and
the editable install carry what ``make sql`` would build. The metadata lives
in pyproject.toml.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUILD_SH = ROOT / "sql" / "build.sh"
SQL_OUT = ROOT / "python_client" / "ratchet" / "_sql"


class build_py_with_sql(build_py):  # noqa: N801 (setuptools command naming)
    """build_py that generates ratchet/_sql/*.sql from sql/ first."""

    def run(self) -> None:
        if BUILD_SH.exists():
            subprocess.run(["sh", str(BUILD_SH), "all", str(SQL_OUT)], check=True)
        elif not any(SQL_OUT.glob("ratchet*.sql")):
            raise SystemExit(
                f"{BUILD_SH} is missing and {SQL_OUT} has no built scripts: "
                "build the package from a checkout or an sdist of Ratchet"
            )
        super().run()


setup(cmdclass={"build_py": build_py_with_sql})

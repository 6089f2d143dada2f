"""Helpers for testing code that uses Ratchet (not used by the runtime).

:class:`EmbeddedPostgres` is a throwaway PostgreSQL cluster: ``initdb`` into a
temporary directory, a private server on a free port, everything removed
again on ``cleanup()``, on leaving the ``with`` block or at interpreter exit.
It trusts every local connection and is meant for tests and demos only. A
pytest fixture (docs/python.md, "Testing your workflows")::

    import pytest
    from ratchet import App, install
    from ratchet.testing import EmbeddedPostgres

    @pytest.fixture(scope="session")
    def ratchet_dsn():
        with EmbeddedPostgres() as pg:
            install(pg.dsn())
            yield pg.dsn()

:class:`SkippingClock` skips time in a test database (a workflow sleeping a
day runs on at once), and the pytest plugin (:mod:`ratchet.testing.plugin`,
loaded automatically) gives tests the fixtures ``ratchet_dsn`` (a fresh
database with Ratchet installed) and ``ratchet_clock``.

When the process runs as root, the server runs as an unprivileged OS user
(``postgres`` if it exists, else a system user ``ratchet`` created on first
use), because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

from ._clock import SKIP_OPTIONS, SkippingClock, skipping_dsn
from ._embedded import EmbeddedPostgres, EmbeddedPostgresError, find_bindir

__all__ = ["SKIP_OPTIONS", "EmbeddedPostgres", "EmbeddedPostgresError", "SkippingClock",
           "find_bindir", "skipping_dsn"]

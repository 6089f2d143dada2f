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

When the process runs as root, the server runs as an unprivileged OS user
(``postgres`` if it exists, else a system user ``ratchet`` created on first
use), because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

from ._embedded import EmbeddedPostgres, EmbeddedPostgresError, find_bindir

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_bindir"]

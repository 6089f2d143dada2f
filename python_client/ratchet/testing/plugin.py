"""A pytest plugin for testing code that uses Ratchet (loaded automatically
when ``pg-ratchet`` is installed: entry point ``pytest11``).

Fixtures:

``ratchet_postgres``
    (session) an :class:`EmbeddedPostgres` started on first use; it needs the
    PostgreSQL server binaries (``RATCHET_PG_BINDIR``, else ``pg_config
    --bindir``, see :func:`find_bindir`).
``ratchet_database``
    a fresh database on it with Ratchet installed (``CREATE EXTENSION`` where
    the server has the extension's files, else the plain-SQL script;
    ``RATCHET_TEST_INSTALL=plain|extension`` forces one) and the skipping
    clock enabled, dropped after the test: a :class:`TestDatabase`.
``ratchet_dsn``
    the connection string for the apps under test (its sessions read the
    skipping clock).
``ratchet_clock``
    the database's :class:`SkippingClock`: ``ratchet_clock.advance(3600)``.

::

    def test_reminder_fires_after_a_day(ratchet_dsn, ratchet_clock):
        app = ratchet.App(ratchet_dsn)
        ...
        ratchet_clock.advance(timedelta(days=1))
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from ._clock import SkippingClock, skipping_dsn
from ._embedded import EmbeddedPostgres


@dataclass(frozen=True)
class TestDatabase:
    """A throwaway database with Ratchet installed."""

    __test__ = False  # not a test class, despite its name

    #: connects as the superuser, reading the real clock (setup, assertions)
    admin_dsn: str
    #: for the apps under test: their sessions read the skipping clock
    dsn: str
    clock: SkippingClock


@pytest.fixture(scope="session")
def ratchet_postgres() -> Iterator[EmbeddedPostgres]:
    """A throwaway PostgreSQL server for the session."""
    with EmbeddedPostgres() as pg:
        yield pg


@pytest.fixture
def ratchet_database(ratchet_postgres: EmbeddedPostgres) -> Iterator[TestDatabase]:
    """A fresh database with Ratchet installed and the skipping clock on."""
    from .._install import install

    name = f"ratchet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ratchet_postgres.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    admin = ratchet_postgres.dsn(name)
    try:
        mode = os.environ.get("RATCHET_TEST_INSTALL", "").strip()
        install(admin, plain={"plain": True, "extension": False}.get(mode))
        clock = SkippingClock(admin)
        clock.enable()
        yield TestDatabase(admin_dsn=admin, dsn=skipping_dsn(admin), clock=clock)
    finally:
        with psycopg.connect(ratchet_postgres.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(
                sql.Identifier(name)))


@pytest.fixture
def ratchet_dsn(ratchet_database: TestDatabase) -> str:
    """The connection string for apps under test (skipping clock)."""
    return ratchet_database.dsn


@pytest.fixture
def ratchet_clock(ratchet_database: TestDatabase) -> SkippingClock:
    """The test database's clock: ``ratchet_clock.advance(seconds)``."""
    return ratchet_database.clock

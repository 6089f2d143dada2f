"""Installing the extension: ``CREATE EXTENSION ratchet`` or the plain-SQL script.

The plain script (``_sql/ratchet.sql``, shipped in this package and read with
``importlib.resources``) creates the same schema on servers where the
extension's files cannot be installed, such as managed PostgreSQL.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import psycopg

from ._db import resolve_dsn
from ._errors import RatchetError

__all__ = ["InstallError", "install", "installed_version", "plain_script"]


class InstallError(RatchetError):
    """The extension could not be installed."""


# SQLSTATEs meaning "the server has no ratchet.control": 0A000 (PG 15+,
# 'extension "ratchet" is not available') and 58P01 (older, 'could not open
# extension control file').
_NOT_AVAILABLE = frozenset({"0A000", "58P01"})


def plain_script() -> str:
    """The plain-SQL install script shipped with the package."""
    return (importlib.resources.files("ratchet") / "_sql" / "ratchet.sql").read_text("utf-8")


def installed_version(conn: psycopg.Connection[Any]) -> str | None:
    """The installed Ratchet version (either kind of install), or None."""
    row = conn.execute("select pg_catalog.to_regprocedure('ratchet.version()') is not null"
                       ).fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("select ratchet.version()").fetchone()
    return None if row is None else str(row[0])


def install(target: str | psycopg.Connection[Any] | None = None,
            plain: bool | None = None) -> str:
    """Install Ratchet into a database and describe what was done.

    ``target`` is a connection string (None: ``RATCHET_DATABASE_URL``,
    ``DATABASE_URL``, then libpq's ``PG*`` defaults) or an open connection.
    ``plain=False`` runs ``CREATE EXTENSION ratchet``; ``plain=True`` runs the
    plain-SQL script; ``None`` tries the extension and falls back to the plain
    script when the server does not have the extension's files. Does nothing
    if Ratchet is already installed.
    """
    if isinstance(target, psycopg.Connection):
        return _install(target, plain)
    with psycopg.connect(resolve_dsn(target), autocommit=True) as conn:
        return _install(conn, plain)


def _install(conn: psycopg.Connection[Any], plain: bool | None) -> str:
    version = installed_version(conn)
    if version is not None:
        return f"ratchet {version} is already installed"
    if not plain:
        try:
            with conn.transaction():
                conn.execute("create extension if not exists ratchet")
        except psycopg.Error as exc:
            if exc.sqlstate not in _NOT_AVAILABLE:
                raise InstallError(f"CREATE EXTENSION ratchet failed: {exc}") from exc
            if plain is False:
                raise InstallError(
                    "the server does not have the ratchet extension's files "
                    f"({str(exc).strip()}). Install them with `make install` on the "
                    "database server, or install the plain SQL version instead: "
                    "`ratchet install --plain`") from exc
        else:
            return f"installed ratchet {installed_version(conn)} (CREATE EXTENSION)"
    try:
        with conn.transaction():
            conn.execute(plain_script().replace("BEGIN;", "", 1).rsplit("COMMIT;", 1)[0])
    except psycopg.Error as exc:
        raise InstallError(f"the plain-SQL install failed: {exc}") from exc
    return f"installed ratchet {installed_version(conn)} (plain SQL)"

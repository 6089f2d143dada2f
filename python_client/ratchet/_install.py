"""Installing and upgrading Ratchet: ``CREATE EXTENSION ratchet`` or the plain-SQL scripts.

The scripts are built from ``sql/`` into ``_sql/`` when the package is built
(``sql/build.sh all``) and read with ``importlib.resources``:

``ratchet.sql``
    plain-SQL install: the same schema on servers where the extension's files
    cannot be installed, such as managed PostgreSQL;
``ratchet-plain--FROM--TO.sql``
    plain-SQL upgrade from FROM to TO (the extension's own upgrade scripts,
    ``ratchet--FROM--TO.sql``, are run by ``ALTER EXTENSION ratchet UPDATE``
    from the server's extension directory).

:func:`install` brings a database to this package's version whichever kind
of install it has, in one transaction, and changes nothing when it refuses.
"""

from __future__ import annotations

import importlib.resources
import re
from typing import Any

import psycopg
from psycopg import sql

from ._db import resolve_dsn
from ._errors import RatchetError

__all__ = ["InstallError", "install", "installed_version", "plain_script", "upgrade_scripts"]


class InstallError(RatchetError):
    """Ratchet could not be installed or upgraded; nothing was changed.

    ``hint`` says what to do about it (also part of the message).
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message}\nhint: {hint}" if hint else message)
        self.hint = hint


# SQLSTATEs meaning "the server has no ratchet.control": 0A000 (PG 15+,
# 'extension "ratchet" is not available') and 58P01 (older, 'could not open
# extension control file').
_NOT_AVAILABLE = frozenset({"0A000", "58P01"})

# Two installs racing each other wait here instead of failing half-way.
_LOCK_KEY = "ratchet install"

_PLAIN_UPGRADE = re.compile(r"^ratchet-plain--(?P<src>[^-]+)--(?P<dst>[^-]+)\.sql$")


def _package_version() -> str:
    """This package's version (ratchet/__init__.py imports this module first)."""
    from . import __version__

    return __version__


def _script(name: str) -> str:
    return (importlib.resources.files("ratchet") / "_sql" / name).read_text("utf-8")


def plain_script() -> str:
    """The plain-SQL install script shipped with the package."""
    return _script("ratchet.sql")


def upgrade_scripts() -> dict[tuple[str, str], str]:
    """The plain-SQL upgrade scripts shipped with the package, by (from, to) version."""
    found: dict[tuple[str, str], str] = {}
    for entry in (importlib.resources.files("ratchet") / "_sql").iterdir():
        m = _PLAIN_UPGRADE.match(entry.name)
        if m:
            found[(m["src"], m["dst"])] = entry.name
    return found


def _version_key(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return None


def _strip_transaction(script: str) -> str:
    """A plain script without its own BEGIN/COMMIT, to run inside ours."""
    return script.replace("BEGIN;", "", 1).rsplit("COMMIT;", 1)[0]


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
    """Install Ratchet into a database, or upgrade it, and describe what was done.

    ``target`` is a connection string (None: ``RATCHET_DATABASE_URL``,
    ``DATABASE_URL``, then libpq's ``PG*`` defaults) or an open autocommit
    connection. On a database without Ratchet, ``plain=False`` runs ``CREATE
    EXTENSION ratchet``, ``plain=True`` the plain-SQL script, and ``None``
    tries the extension and falls back to the plain script when the server
    does not have the extension's files.

    An existing install is upgraded to this package's version in its own kind
    (``plain`` is ignored): an extension by ``ALTER EXTENSION ratchet UPDATE``,
    a plain-SQL install by the plain upgrade scripts; at the same version it
    does nothing. Raises :class:`InstallError`, having changed nothing, for a
    newer or unknown installed version, missing extension upgrade files, or a
    ``ratchet`` schema that Ratchet did not create.
    """
    if isinstance(target, psycopg.Connection):
        return _install(target, plain)
    with psycopg.connect(resolve_dsn(target), autocommit=True) as conn:
        return _install(conn, plain)


def _install(conn: psycopg.Connection[Any], plain: bool | None) -> str:
    # The scripts' NOTICEs (roles that could not be created, with what to do)
    # are part of the answer.
    notices: list[str] = []

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        if (diag.message_primary or "").startswith("ratchet:"):
            hint = f"\nhint: {diag.message_hint}" if diag.message_hint else ""
            notices.append(f"notice: {diag.message_primary}{hint}")

    conn.add_notice_handler(keep)
    try:
        with conn.transaction():
            conn.execute("select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(%s))",
                         [_LOCK_KEY])
            done = _install_locked(conn, plain)
    except psycopg.Error as exc:
        raise InstallError(f"ratchet install failed: {str(exc).strip()}",
                           "nothing was changed (the install runs in one transaction)"
                           ) from exc
    finally:
        conn.remove_notice_handler(keep)
    return "\n".join([done, *notices])


def _install_locked(conn: psycopg.Connection[Any], plain: bool | None) -> str:
    row = conn.execute(
        "select (select extversion from pg_catalog.pg_extension where extname = 'ratchet'),"
        "       exists (select 1 from pg_catalog.pg_namespace where nspname = 'ratchet')"
    ).fetchone()
    assert row is not None
    ext_version, schema_exists = row
    if ext_version is not None:
        return _upgrade_extension(conn, str(ext_version))
    version = installed_version(conn)
    if version is not None:
        return _upgrade_plain(conn, version)
    if schema_exists:
        raise InstallError(
            "this database has a schema named ratchet that Ratchet did not create "
            "(it has no ratchet.version()); nothing was changed",
            "rename it (ALTER SCHEMA ratchet RENAME TO ...) or drop it if it is not needed, "
            "or install Ratchet into another database")
    if not plain:
        try:
            with conn.transaction():
                conn.execute("create extension ratchet")
        except psycopg.Error as exc:
            if exc.sqlstate not in _NOT_AVAILABLE:
                raise InstallError(f"CREATE EXTENSION ratchet failed: {str(exc).strip()}",
                                   "nothing was changed") from exc
            if plain is False:
                raise InstallError(
                    "the server does not have the ratchet extension's files "
                    f"({str(exc).strip()})",
                    "install them with `make install` on the database server, or install "
                    "the plain SQL version instead: `ratchet install --plain`") from exc
        else:
            return f"installed ratchet {installed_version(conn)} (CREATE EXTENSION)"
    conn.execute(_strip_transaction(plain_script()))
    return f"installed ratchet {installed_version(conn)} (plain SQL)"


def _refuse_version(version: str, kind: str) -> InstallError:
    """The error for an installed version this package cannot upgrade from."""
    __version__ = _package_version()
    mine, theirs = _version_key(__version__), _version_key(version)
    if mine is not None and theirs is not None and theirs > mine:
        return InstallError(
            f"RT008: ratchet {version} ({kind}) is installed, newer than this package's "
            f"{__version__}; nothing was changed",
            "upgrade the Python package (pip install -U pg-ratchet) instead of "
            "downgrading the database")
    return InstallError(
        f"RT008: ratchet {version} ({kind}) is installed and this package ({__version__}) "
        "has no upgrade path from it; nothing was changed",
        "upgrade with the package of a version in between first (see docs/upgrading.md)")


def _upgrade_extension(conn: psycopg.Connection[Any], version: str) -> str:
    __version__ = _package_version()
    if version == __version__:
        return (f"ratchet {version} is already installed (extension): already at "
                f"{__version__}, nothing to do")
    mine, theirs = _version_key(__version__), _version_key(version)
    if mine is None or theirs is None or theirs > mine:
        raise _refuse_version(version, "extension")
    row = conn.execute(
        "select exists (select 1 from pg_catalog.pg_available_extension_versions"
        "                where name = 'ratchet' and version = %s)", [__version__]).fetchone()
    if not row or not row[0]:
        raise InstallError(
            f"ratchet {version} is installed as an extension, and the server's extension "
            f"directory has no ratchet {__version__} files to upgrade it with; nothing was "
            "changed",
            f"install the {__version__} files on the database server (`make install` in a "
            f"Ratchet {__version__} checkout: ratchet.control, ratchet--{__version__}.sql and "
            f"ratchet--{version}--{__version__}.sql), then run `ratchet install` again")
    row = conn.execute(
        "select exists (select 1 from pg_catalog.pg_extension_update_paths('ratchet')"
        "                where source = %s and target = %s and path is not null)",
        [version, __version__]).fetchone()
    if not row or not row[0]:
        raise _refuse_version(version, "extension")
    conn.execute(sql.SQL("alter extension ratchet update to {}").format(
        sql.Literal(__version__)))
    return (f"upgraded ratchet {version} -> {installed_version(conn)} "
            "(ALTER EXTENSION ratchet UPDATE)")


def _upgrade_plain(conn: psycopg.Connection[Any], version: str) -> str:
    __version__ = _package_version()
    if version == __version__:
        return (f"ratchet {version} is already installed (plain SQL): already at "
                f"{__version__}, nothing to do")
    scripts = upgrade_scripts()
    path: list[str] = []
    current = version
    while current != __version__:
        step = [(dst, name) for (src, dst), name in scripts.items() if src == current]
        if len(step) != 1 or len(path) > len(scripts):
            raise _refuse_version(version, "plain SQL")
        current, name = step[0]
        path.append(name)
    for name in path:
        conn.execute(_strip_transaction(_script(name)))
    return (f"upgraded ratchet {version} -> {installed_version(conn)} "
            f"(plain SQL: {', '.join(path)})")

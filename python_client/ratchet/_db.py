"""Connections: the pool and the helpers that run the client's statements
(which all live in :mod:`ratchet._queries`).

The pool's connections run in autocommit mode: each call is its own
transaction and costs one round trip; only transactional steps open an
explicit transaction.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.datetime import TimestamptzLoader
from psycopg_pool import ConnectionPool

from ._errors import connection_lost, translate

logger = logging.getLogger("ratchet")

class _InfinityTimestamptzLoader(TimestamptzLoader):
    """timestamptz that reads 'infinity' (a wait with no time limit) as
    ``datetime.max`` instead of failing."""

    def load(self, data: Any) -> datetime:
        if bytes(data) == b"infinity":
            return datetime.max.replace(tzinfo=timezone.utc)
        if bytes(data) == b"-infinity":
            return datetime.min.replace(tzinfo=timezone.utc)
        return super().load(data)


def configure_connection(conn: psycopg.Connection[Any]) -> None:
    """Adapt a connection for reading Ratchet's tables (infinite timestamps)."""
    conn.adapters.register_loader("timestamptz", _InfinityTimestamptzLoader)


def resolve_dsn(dsn: str | None) -> str:
    """The connection string: the argument, else ``RATCHET_DATABASE_URL``, else
    ``DATABASE_URL``, else ``""`` (libpq's ``PG*`` environment defaults)."""
    if dsn:
        return dsn
    return os.environ.get("RATCHET_DATABASE_URL") or os.environ.get("DATABASE_URL") or ""


class Database:
    """A lazily opened connection pool and a few call helpers.

    The pool is created with ``open=False`` and opened explicitly on first use;
    :meth:`ensure_size` grows it (a worker needs its concurrency plus two
    connections: heartbeat and the claim loop).
    """

    def __init__(self, dsn: str | None, *, pool_size: int | None,
                 prepared_statements: bool) -> None:
        self._dsn = dsn
        self._fixed_size = pool_size
        self._size = pool_size or 4
        self._prepared = prepared_statements
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    @property
    def dsn(self) -> str:
        """The connection string in use (see :func:`resolve_dsn`)."""
        return resolve_dsn(self._dsn)

    def set_dsn(self, dsn: str) -> None:
        """Point at another database; only before the pool is opened."""
        with self._lock:
            if self._pool is not None:
                raise RuntimeError("the connection pool is already open")
            self._dsn = dsn

    def ensure_size(self, size: int) -> None:
        """Make sure the pool can hold ``size`` connections (unless the user fixed
        ``pool_size``)."""
        with self._lock:
            if self._fixed_size is not None or size <= self._size:
                return
            self._size = size
            if self._pool is not None:
                self._pool.resize(min_size=min(self._pool.min_size, size), max_size=size)

    def connect_kwargs(self) -> dict[str, Any]:
        """Connection options for the pool's connections."""
        kwargs: dict[str, Any] = {"autocommit": True}
        if not self._prepared:
            kwargs["prepare_threshold"] = None
        return kwargs

    def run(self, conn: psycopg.Connection[Any], query: str, params: Any = None,
            ) -> psycopg.Cursor[DictRow]:
        """Execute one of Ratchet's statements on ``conn`` (prepared on first use,
        unless prepared statements are off) and return the dict-row cursor."""
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(query, params, prepare=self._prepared)

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """The pool, opened on first use."""
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=self._size,
                    kwargs=self.connect_kwargs(), open=False, name="ratchet",
                    configure=configure_connection,
                )
                pool.open(wait=True, timeout=30.0)
                self._pool = pool
            return self._pool

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a pooled (autocommit) connection, waiting up to ``timeout``
        seconds for one (None: the pool's default)."""
        try:
            with self.pool.connection(timeout=timeout) as conn:
                yield conn
        except psycopg.Error as exc:
            self.recover(exc)
            raise

    def recover(self, exc: BaseException) -> None:
        """After an error that lost its connection (server restart, terminated
        backend), check the pool's idle connections so that the next callers get
        live ones instead of failing one by one on stale sockets."""
        pool = self._pool
        if pool is None or not connection_lost(exc):
            return
        try:
            pool.check()
        except Exception as check_exc:  # the server may still be down: next use retries
            logger.debug("ratchet: pool check failed: %s", check_exc)

    @contextmanager
    def _cursor(self, query: str, params: Any) -> Iterator[psycopg.Cursor[DictRow]]:
        """Run one statement on a pooled connection; RT errors become Ratchet
        exceptions."""
        try:
            with self.connection() as conn:
                yield self.run(conn, query, params)
        except psycopg.Error as exc:
            mapped = translate(exc)
            if mapped is not None:
                raise mapped from exc
            raise

    def fetchone(self, query: str, params: Any = None) -> DictRow | None:
        """Run one statement and return its first row as a dict; RT errors become
        Ratchet exceptions."""
        with self._cursor(query, params) as cur:
            return cur.fetchone()

    def fetchall(self, query: str, params: Any = None) -> list[DictRow]:
        """Run one statement and return all rows as dicts; RT errors become Ratchet
        exceptions."""
        with self._cursor(query, params) as cur:
            return cur.fetchall()

    def run_fenced(self, query: str, params: Any, lease_until: float,
                   stop: threading.Event | None = None, *, fetch: str = "one") -> Any:
        """Run one fenced write of a run (checkpoint, finish, fail, heartbeat) in
        its own autocommit transaction and return its first row, retrying it on a
        new connection while the connection is lost and the lease still holds.

        ``lease_until`` is the ``time.monotonic()`` by which the run's lease
        expires. The write is fenced by ``run_id``: a retry of a write that did
        commit before the connection broke is recognised by the database as this
        run's own and succeeds; one that lost the race to a reclaim gets RT002.
        Past the lease (or once ``stop`` is set) the last error is raised, and the
        run is given up: the workflow may then run elsewhere. ``fetch="all"``
        returns every row instead of the first.
        """
        delay = 0.05
        while True:
            remaining = lease_until - time.monotonic()
            try:
                with self.pool.connection(timeout=max(remaining, 0.1)) as conn:
                    cur = self.run(conn, query, params)
                    return cur.fetchall() if fetch == "all" else cur.fetchone()
            except psycopg.Error as exc:
                if not connection_lost(exc):
                    raise
                self.recover(exc)
                remaining = lease_until - time.monotonic()
                if remaining <= delay or (stop is not None and stop.is_set()):
                    raise
                logger.info("ratchet: connection lost during a fenced write (%s); retrying "
                            "in %.2f s, %.1f s of lease left", type(exc).__name__, delay,
                            remaining)
                if stop is not None:
                    if stop.wait(delay):
                        raise
                else:
                    time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def close(self) -> None:
        """Close the pool (it reopens on next use)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

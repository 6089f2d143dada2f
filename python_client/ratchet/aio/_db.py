"""The async connection pool and the helpers that run the client's statements
(the same statements as the sync client, :mod:`ratchet._queries`).

As in :mod:`ratchet._db`, the pool's connections run in autocommit mode (one
call, one transaction, one round trip); only transactional steps open an
explicit transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from .._db import _InfinityTimestamptzLoader, resolve_dsn
from .._errors import connection_lost, translate

logger = logging.getLogger("ratchet")


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("timestamptz", _InfinityTimestamptzLoader)


class AsyncDatabase:
    """A lazily opened :class:`psycopg_pool.AsyncConnectionPool` and a few call
    helpers: the async twin of :class:`ratchet._db.Database`."""

    def __init__(self, dsn: str | None, *, pool_size: int | None,
                 prepared_statements: bool) -> None:
        self._dsn = dsn
        self._fixed_size = pool_size
        self._size = pool_size or 4
        self._prepared = prepared_statements
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def dsn(self) -> str:
        """The connection string in use (see :func:`ratchet._db.resolve_dsn`)."""
        return resolve_dsn(self._dsn)

    def set_dsn(self, dsn: str) -> None:
        """Point at another database; only before the pool is opened."""
        if self._pool is not None:
            raise RuntimeError("the connection pool is already open")
        self._dsn = dsn

    async def ensure_size(self, size: int) -> None:
        """Make sure the pool can hold ``size`` connections (unless the user fixed
        ``pool_size``)."""
        if self._fixed_size is not None or size <= self._size:
            return
        self._size = size
        if self._pool is not None:
            await self._pool.resize(min_size=min(self._pool.min_size, size), max_size=size)

    async def pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The pool, opened on first use."""
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                kwargs: dict[str, Any] = {"autocommit": True}
                if not self._prepared:
                    kwargs["prepare_threshold"] = None
                pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                    self.dsn, min_size=1, max_size=self._size, kwargs=kwargs, open=False,
                    name="ratchet-async", configure=_configure)
                await pool.open(wait=True, timeout=30.0)
                self._pool = pool
            return self._pool

    async def run(self, conn: psycopg.AsyncConnection[Any], query: str, params: Any = None,
                  ) -> psycopg.AsyncCursor[DictRow]:
        """Execute one of Ratchet's statements on ``conn`` and return the cursor."""
        cur = conn.cursor(row_factory=dict_row)
        return await cur.execute(query, params, prepare=self._prepared)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None,
                         ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Borrow a pooled (autocommit) connection."""
        pool = await self.pool()
        try:
            async with pool.connection(timeout=timeout) as conn:
                yield conn
        except psycopg.Error as exc:
            await self.recover(exc)
            raise

    async def recover(self, exc: BaseException) -> None:
        """After an error that lost its connection, check the pool's idle
        connections so the next callers get live ones."""
        if self._pool is None or not connection_lost(exc):
            return
        try:
            await self._pool.check()
        except Exception as check_exc:  # the server may still be down: next use retries
            logger.debug("ratchet: pool check failed: %s", check_exc)

    @asynccontextmanager
    async def _cursor(self, query: str, params: Any) -> AsyncIterator[psycopg.AsyncCursor[DictRow]]:
        """Run one statement on a pooled connection; RT errors become Ratchet
        exceptions (see :meth:`ratchet._db.Database._cursor`)."""
        try:
            async with self.connection() as conn:
                yield await self.run(conn, query, params)
        except psycopg.Error as exc:
            mapped = translate(exc)
            if mapped is not None:
                raise mapped from exc
            raise

    async def fetchone(self, query: str, params: Any = None) -> DictRow | None:
        """Run one statement and return its first row; RT errors become Ratchet
        exceptions."""
        async with self._cursor(query, params) as cur:
            return await cur.fetchone()

    async def fetchall(self, query: str, params: Any = None) -> list[DictRow]:
        """Run one statement and return all rows; RT errors become Ratchet
        exceptions."""
        async with self._cursor(query, params) as cur:
            return await cur.fetchall()

    async def run_fenced(self, query: str, params: Any, lease_until: float,
                         stop: asyncio.Event | None = None) -> DictRow | None:
        """One fenced write of a run, retried on a new connection while the
        connection is lost and the lease holds (see
        :meth:`ratchet._db.Database.run_fenced`: the database recognises a
        retried write that had committed as this run's own)."""
        delay = 0.05
        while True:
            remaining = lease_until - time.monotonic()
            try:
                async with self.connection(timeout=max(remaining, 0.1)) as conn:
                    return await (await self.run(conn, query, params)).fetchone()
            except psycopg.Error as exc:
                if not connection_lost(exc):
                    raise
                remaining = lease_until - time.monotonic()
                if remaining <= delay or (stop is not None and stop.is_set()):
                    raise
                logger.info("ratchet: connection lost during a fenced write (%s); retrying "
                            "in %.2f s, %.1f s of lease left", type(exc).__name__, delay,
                            remaining)
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    else:
                        raise
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        """Close the pool (it reopens on next use)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

"""Connections and the SQL the client sends.

Every statement is a static string calling one function of the extension with
named arguments and explicit casts, so plans and prepared statements are
reused. The pool's connections run in autocommit mode: each call is its own
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

# -- starting and reading ---------------------------------------------------

_START_ARGS = """
  name => %(name)s::text, input => %(input)s::jsonb,
  workflow_id => %(workflow_id)s::text, queue => %(queue)s::text,
  priority => %(priority)s::int, dedup_key => %(dedup_key)s::text,
  start_at => coalesce(%(start_at)s::timestamptz,
                       ratchet.now() + %(delay)s::float8 * interval '1 second'),
  timeout => %(timeout)s::float8 * interval '1 second',
  max_attempts => %(max_attempts)s::int, parent_id => %(parent_id)s::text,
  retry_policy => %(retry_policy)s::jsonb, app_version => %(app_version)s::text"""

START = f"select ratchet.start_workflow({_START_ARGS}) as workflow_id"

# A child workflow and the parent's checkpoint of it, atomically, in one round
# trip: the CTE runs first (the outer select reads its result); if the parent's
# run is stale, record_step raises and the child's insert rolls back with it.
START_CHILD = f"""
with c as (select ratchet.start_workflow({_START_ARGS}) as id)
select c.id as workflow_id,
       ratchet.record_step(workflow_id => %(parent_id)s::text,
                           run_id => %(run_id)s::bigint,
                           step_id => %(step_id)s::int,
                           name => %(step_name)s::text,
                           output => pg_catalog.jsonb_build_object('child_id', c.id))
  from c"""

GET_WORKFLOW = "select * from ratchet.get_workflow(workflow_id => %s::text)"
GET_STEPS = "select * from ratchet.get_steps(workflow_id => %s::text)"
STATUS = "select status, output, error from ratchet.get_workflow(workflow_id => %s::text)"

# -- running ------------------------------------------------------------------

# input and steps come back as JSON text, decoded per workflow by
# _runtime.context_from_claim: a row that cannot be decoded (nested too deep
# for Python's decoder, written by an old version) then fails alone instead
# of taking the whole claimed batch down inside fetchall().
_CLAIMED_COLUMNS = "workflow_id, name, input::text as input, run_id, attempt, steps::text as steps"
CLAIM = f"""select {_CLAIMED_COLUMNS} from ratchet.claim(
  queues => %(queues)s::text[], worker_id => %(worker_id)s::text,
  max_count => %(max_count)s::int, lease => %(lease)s::float8 * interval '1 second',
  names => %(names)s::text[], app_version => %(app_version)s::text)"""
CLAIM_WORKFLOW = f"""select {_CLAIMED_COLUMNS} from ratchet.claim_workflow(
  workflow_id => %(workflow_id)s::text, worker_id => %(worker_id)s::text,
  lease => %(lease)s::float8 * interval '1 second', app_version => %(app_version)s::text)"""
HEARTBEAT = ("select ratchet.heartbeat(worker_id => %s::text, "
             "lease => %s::float8 * interval '1 second', workflow_ids => %s::text[]) as renewed")
TICK = "select ratchet.tick() as started"

MAINTAIN = "select * from ratchet.maintain(max_rows => %s::int)"

RECORD_STEP = """select ratchet.record_step(
  workflow_id => %s::text, run_id => %s::bigint, step_id => %s::int,
  name => %s::text, output => %s::jsonb, error => %s::jsonb)"""
FINISH = ("select ratchet.finish(workflow_id => %s::text, run_id => %s::bigint, "
          "output => %s::jsonb)")
# The database decides retry or not, and when, from the workflow's stored retry
# policy (or the worker's, retry_policy, for a workflow started by name).
FAIL = """select ratchet.fail(workflow_id => %s::text, run_id => %s::bigint,
  error => %s::jsonb, retryable => %s::boolean, retry_policy => %s::jsonb) as status"""
# A workflow this worker cannot run: retried after retry_in whatever its policy.
FAIL_RETRY_IN = """select ratchet.fail(workflow_id => %s::text, run_id => %s::bigint,
  error => %s::jsonb, retry_in => %s::float8 * interval '1 second') as status"""
# An in-process step retry: the delay before the next attempt, NULL for none.
RETRY_DELAY = """select extract(epoch from ratchet.retry_delay(policy => %s::jsonb,
  attempt => %s::int))::float8 as delay"""
# until NULL means "now" (give the workflow back at once, costing no attempt).
SUSPEND = """select ratchet.suspend(workflow_id => %s::text, run_id => %s::bigint,
  until => coalesce(%s::timestamptz, ratchet.now()),
  wait_for => %s::text, wait_key => %s::text)"""
DURABLE_SLEEP = """select wake_at, remaining_seconds from ratchet.durable_sleep(
  workflow_id => %s::text, run_id => %s::bigint, step_id => %s::int,
  seconds => %s::float8)"""
SECONDS_UNTIL = ("select extract(epoch from (%s::timestamptz - ratchet.now()))"
                 "::float8 as remaining")

# -- communication ------------------------------------------------------------

SEND = """select ratchet.send(destination_id => %s::text, message => %s::jsonb,
  topic => %s::text, idempotency_key => %s::text) as message_id"""
# A send from inside a workflow is a step: the message and its checkpoint
# commit together, and the idempotency key defaults to workflow_id:step_id.
SEND_STEP = """
with s as (select ratchet.send(destination_id => %(destination_id)s::text,
                               message => %(message)s::jsonb, topic => %(topic)s::text,
                               idempotency_key => %(idempotency_key)s::text) as id)
select s.id as message_id,
       ratchet.record_step(workflow_id => %(workflow_id)s::text,
                           run_id => %(run_id)s::bigint, step_id => %(step_id)s::int,
                           name => 'send',
                           output => pg_catalog.jsonb_build_object('message_id', s.id))
  from s"""
# "missing" tells SQL NULL (no message) from a message whose body is JSON null.
RECV = """select r.m as message, r.m is null as missing,
  extract(epoch from (%s::timestamptz - ratchet.now()))::float8 as remaining
  from ratchet.recv(workflow_id => %s::text, run_id => %s::bigint, step_id => %s::int,
                    topic => %s::text) as r(m)"""
SET_EVENT = """select ratchet.set_event(workflow_id => %s::text, run_id => %s::bigint,
  step_id => %s::int, key => %s::text, value => %s::jsonb)"""
GET_EVENT = ("select e.v as value, e.v is null as missing "
             "from ratchet.get_event(workflow_id => %s::text, key => %s::text) as e(v)")

# -- managing -----------------------------------------------------------------

CANCEL = "select ratchet.cancel(workflow_id => %s::text) as cancelled"
RESUME = "select ratchet.resume(workflow_id => %s::text)"
FORK = ("select ratchet.fork(workflow_id => %s::text, from_step => %s::int, "
        "new_workflow_id => %s::text) as workflow_id")


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
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a pooled (autocommit) connection."""
        try:
            with self.pool.connection() as conn:
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
                   stop: threading.Event | None = None) -> DictRow | None:
        """Run one fenced write of a run (checkpoint, finish, fail, heartbeat) in
        its own autocommit transaction and return its first row, retrying it on a
        new connection while the connection is lost and the lease still holds.

        ``lease_until`` is the ``time.monotonic()`` by which the run's lease
        expires. The write is fenced by ``run_id``: a retry of a write that did
        commit before the connection broke is recognised by the database as this
        run's own and succeeds; one that lost the race to a reclaim gets RT002.
        Past the lease (or once ``stop`` is set) the last error is raised, and the
        run is given up: the workflow may then run elsewhere.
        """
        delay = 0.05
        while True:
            remaining = lease_until - time.monotonic()
            try:
                with self.pool.connection(timeout=max(remaining, 0.1)) as conn:
                    return self.run(conn, query, params).fetchone()
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

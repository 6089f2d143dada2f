"""Time skipping for tests: a database clock that runs ahead on request.

Every due time in Ratchet is read from ``ratchet.now()``. A session with
``ratchet.fake_now = 'skip'`` reads the real clock plus
``ratchet.settings.clock_offset``; :meth:`SkippingClock.advance` moves that
offset forward, so a workflow sleeping for a day, a ``recv`` timeout, a
deadline or a cron schedule comes due at once, while time keeps flowing for
everything else (leases, in-process waits). Like any fake clock it works
only where the database owner enabled it (``ratchet.settings``); elsewhere
the sessions get ``RT007``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: the libpq ``options`` that make a session read the skipping clock
SKIP_OPTIONS = "-c ratchet.fake_now=skip"


def skipping_dsn(dsn: str) -> str:
    """``dsn`` with :data:`SKIP_OPTIONS` added to its ``options``: give it to the
    ``App``/``AsyncApp`` under test so that every session of its pool reads
    the skipping clock."""
    params: dict[str, Any] = conninfo_to_dict(dsn)
    options = str(params.get("options") or "").strip()
    params["options"] = f"{options} {SKIP_OPTIONS}".strip()
    return make_conninfo(**params)


class SkippingClock:
    """Control of a test database's skipping clock, like the time-skipping test
    environment of Temporal's SDKs::

        clock = SkippingClock(admin_dsn)
        clock.enable()
        app = ratchet.App(skipping_dsn(admin_dsn))
        handle = app.start(reminder, "tomorrow")   # sleeps a day
        clock.advance(timedelta(days=1))           # ... and is due now

    ``dsn`` must connect as the extension owner or a superuser (only they may
    change ``ratchet.settings``), without the skipping option.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _execute(self, query: str, params: Any = None) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

    def enable(self) -> None:
        """Turn the fake clock on for this database (test databases only) and
        reset the offset to zero."""
        self._execute("update ratchet.settings set fake_clock_enabled = true, "
                      "clock_offset = interval '0' returning true")

    def advance(self, by: float | timedelta) -> datetime:
        """Move the clock forward by ``by`` (seconds or a timedelta) and wake the
        workers of every queue (a notification, as when work is started), so
        what came due runs now rather than at the next poll. Returns the new
        time. The clock never goes back."""
        seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        moved = self._execute(
            "with moved as (update ratchet.settings "
            "set clock_offset = clock_offset + make_interval(secs => %s) "
            "returning clock_timestamp() + clock_offset as t), "
            "woken as (select pg_notify('ratchet.queue.' || q.name, '') from ratchet.queues q) "
            "select t from moved, (select count(*) from woken) w", (seconds,))
        assert isinstance(moved, datetime)
        return moved

    @property
    def offset(self) -> timedelta:
        """How far the clock has been moved ahead so far."""
        value = self._execute("select clock_offset from ratchet.settings")
        assert isinstance(value, timedelta)
        return value

    def now(self) -> datetime:
        """The skipping clock's time (what ``ratchet.now()`` returns to sessions
        that read it)."""
        value = self._execute("select clock_timestamp() + clock_offset from ratchet.settings")
        assert isinstance(value, datetime)
        return value

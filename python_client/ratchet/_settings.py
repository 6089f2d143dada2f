"""What the sync and async apps configure alike: the database, where wake-ups
LISTEN (or that they only poll, behind a transaction pooler), the polling
interval, the suspend threshold and the application version. Environment
variables: ``RATCHET_APP_VERSION``, ``RATCHET_LISTEN_DSN``, ``RATCHET_POOLED``
(docs/configuration.md)."""

from __future__ import annotations

import os
from typing import Any

from ._listener import Listener


class AppSettings:
    """The configuration half of :class:`ratchet.App` and
    :class:`ratchet.AsyncApp` (see :class:`ratchet.App` for each option)."""

    #: the polling interval behind a pooler without ``listen_dsn`` (seconds)
    POOLED_POLL_INTERVAL = 0.2

    _db: Any

    def _configure(self, db: Any, *, suspend_threshold: float, poll_interval: float | None,
                   listen_dsn: str | None, pooled: bool | None,
                   app_version: str | None) -> None:
        self.app_version = app_version if app_version is not None else \
            (os.environ.get("RATCHET_APP_VERSION") or None)
        self._db = db
        self._listen_dsn = listen_dsn or os.environ.get("RATCHET_LISTEN_DSN") or None
        if pooled is None:
            pooled = os.environ.get("RATCHET_POOLED", "").strip().lower() in ("1", "true", "yes")
        self.pooled = pooled
        # one LISTEN connection in a thread, shared by every wait of the app
        self._listener = Listener(self._listen_conninfo)
        if poll_interval is None:
            poll_interval = self.POOLED_POLL_INTERVAL if self._polls_only() else 1.0
        self.suspend_threshold = suspend_threshold
        self.poll_interval = poll_interval

    @property
    def dsn(self) -> str:
        """The connection string in use."""
        return str(self._db.dsn)

    def set_dsn(self, dsn: str) -> None:
        """Use another database (before first use; the CLI's ``--dsn``)."""
        self._db.set_dsn(dsn)

    def set_listen_dsn(self, dsn: str) -> None:
        """LISTEN for wake-ups on this direct connection (the CLI's ``--listen-dsn``)."""
        self._listen_dsn = dsn
        if self.poll_interval == self.POOLED_POLL_INTERVAL:
            self.poll_interval = 1.0

    def _polls_only(self) -> bool:
        """Behind a transaction pooler with no direct connection: never LISTEN."""
        return self.pooled and self._listen_dsn is None

    def _listen_conninfo(self) -> str | None:
        """Where the listener connects (None: nowhere, waits only poll)."""
        if self._listen_dsn is not None:
            return self._listen_dsn
        return None if self.pooled else str(self._db.dsn)

"""One LISTEN connection per app, shared by every wait in the process.

Notifications are hints only: every waiter also polls, so a missed
notification (or a pooler that cannot LISTEN) only costs latency. Waiters
subscribe *before* checking the database, so a notification that arrives
between the check and the wait is not lost.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger("ratchet")

ENDED = "ratchet.ended"
EVENT = "ratchet.event"
MESSAGE = "ratchet.message"


def queue_channel(queue: str) -> str:
    """The channel on which the extension announces work on ``queue``."""
    return f"ratchet.queue.{queue}"


Callback = Callable[[str], None]


class Subscription:
    """A registered interest in a channel (and optionally one payload), with an
    event that is set when a matching notification arrives."""

    def __init__(self, listener: Listener, channel: str, payload: str | None,
                 callback: Callback | None) -> None:
        self.listener = listener
        self.channel = channel
        self.payload = payload
        self.callback = callback
        self.event = threading.Event()

    def deliver(self, payload: str) -> None:
        if self.payload is not None and payload != self.payload:
            return
        self.event.set()
        if self.callback is not None:
            self.callback(payload)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; clear it and report
        whether one came."""
        got = self.event.wait(max(0.0, timeout))
        self.event.clear()
        return got

    def close(self) -> None:
        """Stop receiving notifications."""
        self.listener.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener:
    """A background thread holding one connection that LISTENs on every channel
    some subscriber asked for, and hands notifications to the subscribers."""

    #: how long one wait for notifications lasts before new channels are LISTENed
    TICK = 0.25

    def __init__(self, conninfo: Callable[[], str | None]) -> None:
        self._conninfo = conninfo
        self._lock = threading.Condition()
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count()
        self._wanted: set[str] = set()
        self._listening: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._failed_at = 0.0

    def subscribe(self, channel: str, payload: str | None = None,
                  callback: Callback | None = None, *, wait: float = 2.0) -> Subscription:
        """Subscribe to ``channel`` (only notifications carrying ``payload`` when it
        is given). A channel not LISTENed yet is waited for up to ``wait``
        seconds, so a check made right after subscribing cannot miss a
        notification (unless the LISTEN connection is failing: then polling
        alone has to do)."""
        sub = Subscription(self, channel, payload, callback)
        if self._conninfo() is None:  # behind a pooler: polling only, never LISTEN
            return sub
        with self._lock:
            self._subs[next(self._ids)] = sub
            self._wanted.add(channel)
            self._start()
            if wait > 0 and channel not in self._listening and not self._failed_recently():
                self._lock.wait_for(lambda: channel in self._listening or self._closed.is_set(),
                                    timeout=wait)
        return sub

    def add_channels(self, channels: Iterable[str], wait: float = 2.0) -> None:
        """LISTEN on ``channels`` (waiting up to ``wait`` seconds for it)."""
        channels = set(channels)
        if self._conninfo() is None:
            return
        with self._lock:
            self._wanted |= channels
            self._start()
            if not self._failed_recently():
                self._lock.wait_for(lambda: channels <= self._listening
                                    or self._closed.is_set(), timeout=wait)

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription (its channel stays LISTENed: cheap, and likely
        needed again)."""
        with self._lock:
            for key, value in list(self._subs.items()):
                if value is sub:
                    del self._subs[key]

    def close(self) -> None:
        """Stop the thread; its connection closes within a fraction of a second."""
        self._closed.set()
        with self._lock:
            self._lock.notify_all()

    def _failed_recently(self) -> bool:
        return time.monotonic() - self._failed_at < 5.0

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closed.clear()
            self._thread = threading.Thread(target=self._run, name="ratchet-listener",
                                            daemon=True)
            self._thread.start()

    def _dispatch(self, channel: str, payload: str) -> None:
        with self._lock:
            subs = [s for s in self._subs.values() if s.channel == channel]
        for sub in subs:
            try:
                sub.deliver(payload)
            except Exception:  # a callback must not kill the listener
                logger.exception("ratchet: notification callback failed")

    def _run(self) -> None:
        delay = 0.5
        while not self._closed.is_set():
            try:
                conninfo = self._conninfo()
                if conninfo is None:
                    return
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    delay = 0.5
                    self._serve(conn)
            except psycopg.Error as exc:
                logger.info("ratchet: LISTEN connection failed (%s); polling only for now",
                            exc)
                with self._lock:
                    self._listening.clear()
                    self._failed_at = time.monotonic()
                    self._lock.notify_all()
                self._closed.wait(delay)
                delay = min(delay * 2, 10.0)
        with self._lock:
            self._listening.clear()

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        while not self._closed.is_set():
            with self._lock:
                todo = self._wanted - self._listening
            for channel in sorted(todo):
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            if todo:
                with self._lock:
                    self._listening |= todo
                    self._lock.notify_all()
            for note in conn.notifies(timeout=self.TICK):
                self._dispatch(note.channel, note.payload)

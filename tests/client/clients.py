"""``Client``: one app of either flavour (``ratchet.App`` or
``ratchet.AsyncApp``) behind one synchronous interface, so a test is written
once and parametrized over both clients. ``client.wait(x)`` returns ``x``,
or, for the async client, runs the awaitable ``x`` on the client's event loop
(a thread) and returns its result."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import Counter
from typing import Any

from flows import register_async, register_sync

import ratchet


class Client:
    """One app of either flavour, its workflows, and the workers it started."""

    def __init__(self, flavor: str, dsn: str, *, flows: bool = True, **app_options: Any) -> None:
        app_options.setdefault("poll_interval", 0.1)
        app_options.setdefault("suspend_threshold", 0.3)
        self.flavor = flavor
        self.seen: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[tuple[Any, Any]] = []
        if flavor == "sync":
            self.app: Any = ratchet.App(dsn, **app_options)
            if flows:
                register_sync(self.app, self.seen)
        else:
            self.loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self._thread.start()
            self.app = ratchet.AsyncApp(dsn, **app_options)
            if flows:
                register_async(self.app, self.seen)

    def wait(self, value: Any, timeout: float = 30.0) -> Any:
        if not inspect.isawaitable(value):
            return value
        assert self.loop is not None, "a sync client returned an awaitable"

        async def awaited() -> Any:
            return await value

        return asyncio.run_coroutine_threadsafe(awaited(), self.loop).result(timeout)

    def wf(self, name: str) -> Any:
        return self.app.workflows[name]

    def start(self, name: str, *args: Any, **options: Any) -> Any:
        """A handle to workflow ``name`` started with ``args``."""
        wf = self.wf(name)
        return self.wait(self.app.start(wf.with_options(**options) if options else wf, *args))

    def result(self, handle: Any, timeout: float = 20.0) -> Any:
        return self.wait(handle.result(timeout=timeout), timeout + 5)

    def run_worker(self, **kw: Any) -> Any:
        kw.setdefault("install_signal_handlers", False)
        kw.setdefault("concurrency", 4)
        kw.setdefault("poll_interval", 0.1)
        kw.setdefault("grace_period", 1.0)
        worker = self.app.worker(**kw)
        if self.loop is None:
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            assert worker.wait_started(10)
            self._workers.append((worker, thread))
        else:
            task = asyncio.run_coroutine_threadsafe(worker.run(), self.loop)
            self.wait(worker.wait_started(), 10)
            self._workers.append((worker, task))
        return worker

    def close(self) -> None:
        for worker, runner in self._workers:
            if self.loop is None:
                worker.stop()
                runner.join(15)
            else:
                self.loop.call_soon_threadsafe(worker.stop)
                runner.result(15)
        self.wait(self.app.close())
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()

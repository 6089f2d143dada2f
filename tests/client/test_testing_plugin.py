"""ratchet.testing for users' own test suites: the pytest plugin (loaded by
the ``pytest11`` entry point, as in any project that installs pg-ratchet)
gives a fresh database and a skipping clock, so a workflow that sleeps a day
or waits an hour for a message is tested in seconds. The user's test file
below runs in its own pytest process, as a user's suite would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import subprocess_env

USER_TESTS = '''
import threading
from datetime import timedelta

import psycopg
import ratchet
from ratchet import aio


def test_a_day_long_sleep_is_skipped(ratchet_dsn, ratchet_clock):
    app = ratchet.App(ratchet_dsn, poll_interval=0.1)

    @app.workflow()
    def reminder(who: str) -> str:
        ratchet.sleep(24 * 3600)
        return f"reminded {who}"

    @app.workflow()
    def patient() -> object:
        return ratchet.recv("answer", timeout=3600)

    worker = app.worker(install_signal_handlers=False, poll_interval=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        handle = app.start(reminder, "ada")
        waiting = app.start(patient)

        def suspended(h):
            return h.status() == "enqueued" and h.status().waiting_for in ("sleep", "message")

        for h in (handle, waiting):
            for _ in range(500):
                if suspended(h):
                    break
                threading.Event().wait(0.02)
            assert suspended(h), h.status()
        before = app.now()
        ratchet_clock.advance(timedelta(days=1))
        assert handle.result(timeout=10) == "reminded ada"
        assert waiting.result(timeout=10) is None  # its hour-long recv timed out
        assert app.now() - before >= timedelta(days=1)
        assert ratchet_clock.offset == timedelta(days=1)
    finally:
        worker.stop()
        thread.join(10)
        app.close()


def test_each_test_gets_a_fresh_database_and_clock(ratchet_dsn, ratchet_clock):
    assert ratchet_clock.offset == timedelta(0)
    with psycopg.connect(ratchet_dsn) as conn:
        assert conn.execute("select count(*) from ratchet.workflows").fetchone() == (0,)


def test_the_async_client_skips_too(ratchet_dsn, ratchet_clock):
    import asyncio

    app = ratchet.AsyncApp(ratchet_dsn, poll_interval=0.1)

    @app.workflow()
    async def nap() -> str:
        await aio.sleep(7 * 24 * 3600)
        return "rested"

    async def main() -> str:
        async with app:
            worker = app.worker(install_signal_handlers=False, poll_interval=0.1)
            task = asyncio.ensure_future(worker.run())
            handle = await app.start(nap)
            for _ in range(500):
                status = await handle.status()
                if status == "enqueued" and status.waiting_for == "sleep":
                    break
                await asyncio.sleep(0.02)
            await asyncio.to_thread(ratchet_clock.advance, timedelta(weeks=1))
            result = await handle.result(timeout=10)
            worker.stop()
            await task
            return result

    assert asyncio.run(main()) == "rested"
'''


def test_the_plugin_gives_user_tests_a_database_and_a_skipping_clock(dsn, tmp_path: Path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path, env=subprocess_env(dsn, RATCHET_TEST_INSTALL="plain"),
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout, proc.stdout

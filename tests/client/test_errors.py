"""Errors users can catch: async functions rejected at decoration, StepTimeout as
its own class on the first run and on replay, arguments bound at start."""

from __future__ import annotations

import functools
import time
from collections import Counter

import pytest

import ratchet


def test_async_functions_are_rejected_at_decoration(app):
    async def flow() -> None: ...

    async def agen():  # type: ignore[no-untyped-def]
        yield 1

    class AsyncCallable:
        async def __call__(self) -> None: ...

    for decorate in (app.workflow(), app.step(), app.transaction(), app.workflow, app.step):
        for fn in (flow, agen, functools.partial(flow), AsyncCallable()):
            with pytest.raises(ratchet.AsyncNotSupported) as err:
                decorate(fn)
            assert isinstance(err.value, TypeError)
            assert "plain `def`" in str(err.value)
    assert app.workflows == {}


def test_step_timeout_is_caught_as_its_class_on_first_run_and_replay(app):
    calls = Counter()
    caught: list[tuple[str, bool, bool]] = []

    @app.step(timeout=0.2, retries=1, interval=0.01)
    def slow() -> None:
        calls["slow"] += 1
        time.sleep(1.0)

    @app.workflow(retries=1, retry_interval=0.01)
    def flow() -> str:
        try:
            slow()
        except ratchet.StepTimeout as exc:
            caught.append((type(exc).__name__, isinstance(exc, ratchet.StepError),
                           isinstance(exc, TimeoutError)))
            assert exc.type == "ratchet.StepTimeout" and exc.step_id == 0
        if len(caught) == 1:
            raise RuntimeError("fail the first attempt so the second replays the step")
        return "done"

    t0 = time.monotonic()
    assert flow() == "done"
    assert time.monotonic() - t0 < 2.5
    assert caught == [("StepTimeout", True, True)] * 2  # first run, then replay
    assert calls["slow"] == 2  # two attempts on the first run, none on replay


def test_other_step_errors_stay_step_error(app):
    @app.step()
    def boom() -> None:
        raise ValueError("x")

    @app.workflow()
    def flow() -> str:
        try:
            boom()
        except ratchet.StepTimeout:
            return "timeout"
        except ratchet.StepError as exc:
            return type(exc).__name__ + ":" + exc.type
        return "no error"

    assert flow() == "StepError:ValueError"


def test_arguments_are_bound_at_start(app, conn):
    @app.workflow()
    def flow(a: int, b: int = 2, *, c: int = 3) -> int:
        return a + b + c

    for args, kwargs in (((), {}), ((1, 2, 3), {}), ((1,), {"d": 4}), ((1,), {"a": 1})):
        with pytest.raises(ratchet.WorkflowArgumentError) as err:
            app.start(flow, *args, workflow_id="bad", **kwargs)
        assert isinstance(err.value, TypeError)
        assert "it takes flow(a, b=2, *, c=3)" in str(err.value)
        with pytest.raises(ratchet.WorkflowArgumentError):
            flow(*args, **kwargs)
    assert conn.execute("select count(*) as n from ratchet.workflows").fetchone()["n"] == 0
    # options are not arguments of the workflow
    h = app.start(flow, 1, workflow_id="ok", queue="default", c=5)
    assert h.workflow_id == "ok"
    assert flow(1, b=1) == 5

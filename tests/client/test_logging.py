"""Log records carry workflow_id/run_id/step_id fields, and messages carry no
"ratchet:" prefix of their own (the logger's name already says it)."""

from __future__ import annotations

import logging


def test_log_records_are_structured_without_doubled_prefix(app, run_worker, caplog):
    @app.step(retries=1, interval=0.01)
    def flaky() -> int:
        if not flaky_state:
            flaky_state.append(1)
            raise ValueError("first try")
        return 1

    flaky_state: list[int] = []

    @app.workflow()
    def logged() -> int:
        return flaky()

    caplog.set_level(logging.INFO, logger="ratchet")
    handle = app.start(logged, workflow_id="log-1")
    run_worker(app)
    assert handle.result(timeout=20) == 1
    records = [r for r in caplog.records if r.name == "ratchet"]
    assert records and not any(r.getMessage().startswith("ratchet:") for r in records)
    retry = next(r for r in records if "first try" in r.getMessage())
    assert (retry.workflow_id, retry.step_id) == ("log-1", 0)  # type: ignore[attr-defined]
    done = next(r for r in records if "succeeded" in r.getMessage())
    assert done.workflow_id == "log-1" and done.step_id is None  # type: ignore[attr-defined]
    assert isinstance(done.run_id, int)  # type: ignore[attr-defined]

"""``polyglot_order``: the demo workflow, written twice with the same semantics,
here for the Python client and in ``polyglot_order.js`` for the Node worker.

Either language's worker can start a workflow, crash, and leave the rest to
the other: the steps' outputs are plain JSON, so each replays the other's
checkpoints. Run a Python worker for it with::

    PYTHONPATH=../../python_client python -m ratchet worker polyglot_order:app --dsn URL

Input: ``{"order_id": int}`` plus optional test knobs (same meaning in both):
``delay_ms`` (each step body waits this long), ``hold_step`` and ``hold_file``
(the body of step ``hold_step`` waits until ``hold_file`` exists), and
``trace_file`` (each step body appends ``<language> <idempotency key> <step>``
when it starts; replays append nothing).

Steps: ``reserve`` -> ``{"reserved": order_id, "by": language}``, ``charge`` ->
``"charge-<order_id>"``, ``ship`` -> ``{"shipped": true, "by": language}``.
Result: ``{"order_id", "charge", "by"}``, ``by`` listing the languages that ran
the steps in step order, repeats merged.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ratchet

LANGUAGE = "python"


def _knobs(knobs: dict[str, Any], step: str) -> None:
    """The test knobs, run at the start of each step body."""
    trace = knobs.get("trace_file")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{LANGUAGE} {ratchet.step_idempotency_key()} {step}\n")
    hold = knobs.get("hold_file")
    if hold and knobs.get("hold_step") == step:
        while not os.path.exists(hold):
            time.sleep(0.02)
    if knobs.get("delay_ms"):
        time.sleep(knobs["delay_ms"] / 1000)


def _merge_runs(seen: list[str | None]) -> list[str]:
    """Languages in order, adjacent repeats merged."""
    out: list[str] = []
    for lang in seen:
        if lang and (not out or out[-1] != lang):
            out.append(lang)
    return out


def make_app(dsn: str | None = None, **options: Any) -> ratchet.App:
    """A ``ratchet.App`` with ``polyglot_order`` registered (``dsn`` None: the
    ``RATCHET_DATABASE_URL`` / ``DATABASE_URL`` / ``PG*`` environment)."""
    app = ratchet.App(dsn, **options)

    @app.step(name="reserve")
    def reserve(order_id: int, knobs: dict[str, Any]) -> dict[str, Any]:
        _knobs(knobs, "reserve")
        return {"reserved": order_id, "by": LANGUAGE}

    @app.step(name="charge")
    def charge(order_id: int, knobs: dict[str, Any]) -> str:
        _knobs(knobs, "charge")
        return f"charge-{order_id}"

    @app.step(name="ship")
    def ship(order_id: int, knobs: dict[str, Any]) -> dict[str, Any]:
        _knobs(knobs, "ship")
        return {"shipped": True, "by": LANGUAGE}

    @app.workflow(name="polyglot_order")
    def polyglot_order(order_id: int, **knobs: Any) -> dict[str, Any]:
        reserved = reserve(order_id, knobs)
        charged = charge(order_id, knobs)
        shipped = ship(order_id, knobs)
        return {"order_id": order_id, "charge": charged,
                "by": _merge_runs([reserved.get("by"), shipped.get("by")])}

    return app


#: for ``python -m ratchet worker polyglot_order:app``
app = make_app()

"""Safe code changes: ``patched()`` and ``deprecate_patch()``.

A change is marked by a ``patch:<change_id>`` step recorded where new code
first passes; runs recorded by old code are recognised by a later step
recorded without that marker, and keep the old branch on replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from . import _queries
from ._context import RunContext, active_run, active_workflow

PATCH_PREFIX = "patch:"


def patch_decision(recorded: Mapping[int, dict[str, Any]], position: int,
                   change_id: str) -> Literal["marker", "old", "new"]:
    """What the recorded steps say at step number ``position`` about change
    ``change_id`` (no I/O): ``marker`` (its marker is recorded there: new code,
    consume the step), ``old`` (the old code recorded this or a later step
    without the marker: keep its numbering, take the old branch) or ``new``
    (nothing recorded yet: new code, record the marker)."""
    rec = recorded.get(position)
    if rec is not None and rec.get("name") == PATCH_PREFIX + change_id:
        return "marker"
    if rec is not None or any(k >= position for k in recorded):
        return "old"
    return "new"


def patched(change_id: str) -> bool:
    """Whether this run takes the new code of change ``change_id``.

    Write a code change that must not disturb runs already in flight as::

        if ratchet.patched("charge-v2"):
            charge_v2(order)
        else:
            charge(order)

    A run that reaches this point under the new code gets True, and a marker
    step ``patch:<change_id>`` is recorded here. A run that started under the
    old code and had already recorded steps past this point gets False, so its
    replay takes the old branch and finds its recorded steps where they were:
    the marker is only looked for, never numbered, in old runs. Replays
    decide the same way (marker present: True; a later step recorded without
    it: False). Within one run, further calls with the same id return the
    first answer. Outside workflows (and inside steps) it returns True.
    """
    if not change_id:
        raise ValueError("patched() needs a non-empty change id")
    ctx = active_workflow()
    if ctx is None:
        return True
    decision, marker_step = decide_patch(ctx, change_id)
    if marker_step is not None:
        ctx.call(_queries.RECORD_STEP, (ctx.workflow_id, ctx.run_id, marker_step,
                                        PATCH_PREFIX + change_id, PATCH_MARKER, None))
    return decision


#: the output of a ``patch:<change_id>`` marker step
PATCH_MARKER = '{"patched": true}'


def decide_patch(ctx: RunContext, change_id: str) -> tuple[bool, int | None]:
    """What :func:`patched` returns in this run, and the step number at which
    its marker must be recorded now (None: nothing to record). Takes the step
    number when the marker is recorded or replayed; no I/O (the sync and
    async clients record the marker their way)."""
    ctx.check()
    if change_id in ctx.patches:
        return ctx.patches[change_id], None
    found = patch_decision(ctx.recorded, ctx.next_step, change_id)
    marker_step = None
    if found == "old":
        decision = False
    elif found == "marker":
        ctx.take_step()
        decision = True
    else:
        marker_step = ctx.take_step()
        decision = True
    ctx.patches[change_id] = decision
    return decision, marker_step


def deprecate_patch(change_id: str) -> None:
    """Mark change ``change_id`` as complete, once no run that can take the old
    branch is left: replace ``if patched(id): new() else: old()`` by
    ``deprecate_patch(id); new()``. Runs that recorded the marker still replay
    (the marker's step number is consumed); new runs record nothing. Remove
    the call once those runs have ended too."""
    if not change_id:
        raise ValueError("deprecate_patch() needs a non-empty change id")
    ctx = active_run()  # no I/O: sync and async workflows alike
    if ctx is None:
        return
    ctx.check()
    if patch_decision(ctx.recorded, ctx.next_step, change_id) == "marker":
        ctx.take_step()
    ctx.patches[change_id] = True

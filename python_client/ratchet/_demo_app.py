"""The workflow that ``ratchet demo`` runs (and kills a worker in the middle of).

A worker subprocess imports it as ``ratchet._demo_app:app``; the database
comes from ``RATCHET_DATABASE_URL``. Every step appends a row to
``demo_effects`` when it really runs, so counting rows shows how many times
each step's effect happened.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

import ratchet

app = ratchet.App()

#: the worker that is going to be killed makes step 3 slow (env var set by the demo)
SLOW_SECONDS = float(os.environ.get("RATCHET_DEMO_SLOW", "0") or 0)

EFFECTS_TABLE = """create table if not exists demo_effects (
  id          bigserial primary key,
  workflow_id text not null,
  step        text not null,
  pid         int not null default pg_backend_pid(),
  at          timestamptz not null default clock_timestamp())"""


def _effect(step: str) -> None:
    """Record that a plain step ran (its own autocommit transaction: at-least-once)."""
    with app.connection() as conn:
        conn.execute("insert into demo_effects (workflow_id, step) values (%s, %s)",
                     (ratchet.workflow_id(), step))


@app.transaction()
def reserve_stock(cur: psycopg.Cursor[Any], order_id: int) -> dict[str, Any]:
    """Transactional step: the row commits with the step's checkpoint."""
    cur.execute("insert into demo_effects (workflow_id, step) values (%s, 'reserve_stock')",
                (ratchet.workflow_id(),))
    return {"reserved": 2, "order_id": order_id}


@app.step()
def charge_card(order_id: int) -> dict[str, Any]:
    """A call to the outside world, made idempotent with the step's key."""
    _effect("charge_card")
    return {"charge_id": f"ch_{ratchet.step_idempotency_key()}", "amount": 4200}


@app.step()
def pack_items(order_id: int) -> str:
    """An ordinary step."""
    _effect("pack_items")
    return f"box-{order_id}"


@app.transaction()
def ship_order(cur: psycopg.Cursor[Any], order_id: int, box: str) -> dict[str, Any]:
    """Transactional and slow in the first worker: the demo kills it in here."""
    cur.execute("insert into demo_effects (workflow_id, step) values (%s, 'ship_order')",
                (ratchet.workflow_id(),))
    if SLOW_SECONDS:
        cur.execute("select pg_sleep(%s) /* ratchet-demo: ship_order */", (SLOW_SECONDS,))
    return {"tracking": f"TRK-{order_id}", "box": box}


@app.step()
def send_receipt(order_id: int, charge_id: str) -> str:
    """The last step."""
    _effect("send_receipt")
    return f"receipt for {charge_id} sent"


@app.workflow(name="demo_checkout")
def checkout(order_id: int) -> dict[str, Any]:
    """Five steps: reserve, charge, pack, ship, receipt."""
    reserve_stock(order_id)
    charge = charge_card(order_id)
    box = pack_items(order_id)
    shipment = ship_order(order_id, box)
    receipt = send_receipt(order_id, charge["charge_id"])
    return {"order_id": order_id, "tracking": shipment["tracking"], "receipt": receipt}


STEPS = ["reserve_stock", "charge_card", "pack_items", "ship_order", "send_receipt"]

"""Order checkout with Ratchet: a stock transaction, a payment, a durable sleep.

Run it (from the repository root, with a database in DATABASE_URL)::

    export DATABASE_URL=postgresql:///shop
    python examples/checkout.py setup            # install ratchet, create the tables
    ratchet worker examples.checkout:app         # a worker (as many as you like)
    python examples/checkout.py order 42         # start a checkout, wait for its result
    ratchet show order-42                        # its steps as a timeline

Kill the worker at any point (even ``kill -9``) and start it again: the
checkout carries on from its last checkpoint. The stock is decremented
exactly once (a transactional step), the card is charged once (the payment
step passes its idempotency key to the gateway), and the follow-up e-mail is
sent after a durable sleep that holds no worker while it waits.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psycopg

import ratchet

app = ratchet.App()

#: seconds between the order and the review request (a durable sleep)
REVIEW_DELAY = float(os.environ.get("CHECKOUT_REVIEW_DELAY", "5"))

SCHEMA = """
create table if not exists stock (
  sku       text primary key,
  available int not null check (available >= 0));
create table if not exists orders (
  order_id  int primary key,
  sku       text not null,
  quantity  int not null,
  status    text not null,
  charge_id text);
create table if not exists payments (      -- the fake payment gateway's own table
  idempotency_key text primary key,
  charge_id       text not null,
  amount_cents    int not null);
create table if not exists emails (
  order_id int not null,
  body     text not null,
  sent_at  timestamptz not null default now());
insert into stock (sku, available) values ('book', 100) on conflict do nothing;
"""


class OutOfStock(Exception):
    """Not enough stock for the order."""


class PaymentGateway:
    """Stand-in for an external payment API. Like Stripe's, it accepts an
    idempotency key: a retried request with the same key charges once."""

    def charge(self, amount_cents: int, *, idempotency_key: str) -> str:
        with app.connection() as conn:
            conn.execute(
                "insert into payments (idempotency_key, charge_id, amount_cents) "
                "values (%s, 'ch_' || md5(%s), %s) on conflict do nothing",
                (idempotency_key, idempotency_key, amount_cents))
            row = conn.execute("select charge_id from payments where idempotency_key = %s",
                               (idempotency_key,)).fetchone()
        assert row is not None
        return str(row[0])


gateway = PaymentGateway()


@app.transaction()
def reserve_stock(cur: psycopg.Cursor[Any], order_id: int, sku: str, quantity: int) -> None:
    """Take the items out of stock and record the order, in one transaction with
    the step's checkpoint: exactly once, even if the worker dies mid-way."""
    cur.execute("update stock set available = available - %s "
                "where sku = %s and available >= %s", (quantity, sku, quantity))
    if cur.rowcount == 0:
        raise OutOfStock(f"not enough {sku!r} for order {order_id}")
    cur.execute("insert into orders (order_id, sku, quantity, status) "
                "values (%s, %s, %s, 'reserved')", (order_id, sku, quantity))


@app.transaction()
def release_stock(cur: psycopg.Cursor[Any], order_id: int) -> None:
    """Compensation: put the items back when the payment fails."""
    cur.execute("update stock s set available = s.available + o.quantity from orders o "
                "where o.order_id = %s and s.sku = o.sku and o.status = 'reserved'",
                (order_id,))
    cur.execute("update orders set status = 'cancelled' where order_id = %s", (order_id,))


@app.step(retries=3, backoff=2.0, interval=0.5)
def charge_payment(order_id: int, amount_cents: int) -> str:
    """Charge the card. External calls are at-least-once, so the step passes its
    stable idempotency key (workflow_id:step_id) to the gateway."""
    return gateway.charge(amount_cents, idempotency_key=ratchet.step_idempotency_key())


@app.transaction()
def mark_paid(cur: psycopg.Cursor[Any], order_id: int, charge_id: str) -> None:
    """Record the payment on the order."""
    cur.execute("update orders set status = 'paid', charge_id = %s where order_id = %s",
                (charge_id, order_id))


@app.transaction()
def send_email(cur: psycopg.Cursor[Any], order_id: int, body: str) -> None:
    """'Send' an e-mail (an outbox row, committed with the checkpoint)."""
    cur.execute("insert into emails (order_id, body) values (%s, %s)", (order_id, body))


@app.workflow()
def checkout(order_id: int, sku: str, quantity: int, amount_cents: int) -> dict[str, Any]:
    """Reserve, charge (or release the stock if the charge fails), confirm, and
    ask for a review after a durable sleep."""
    reserve_stock(order_id, sku, quantity)
    try:
        charge_id = charge_payment(order_id, amount_cents)
    except ratchet.StepError:
        release_stock(order_id)
        raise
    mark_paid(order_id, charge_id)
    send_email(order_id, f"Thanks! Order {order_id} is paid ({charge_id}).")
    ratchet.sleep(REVIEW_DELAY)  # durable: survives restarts, holds no worker
    send_email(order_id, f"How do you like your {sku}?")
    return {"order_id": order_id, "charge_id": charge_id, "status": "paid"}


def setup() -> None:
    """Install Ratchet and create the example's tables."""
    print(ratchet.install(app.dsn))
    with app.connection() as conn:
        conn.execute(SCHEMA)
    print("tables ready")


def main(argv: list[str]) -> int:
    if argv[:1] == ["setup"]:
        setup()
        return 0
    if argv[:1] == ["order"] and len(argv) == 2:
        order_id = int(argv[1])
        handle = app.start(checkout.with_options(workflow_id=f"order-{order_id}"),
                           order_id, "book", 1, 1999)
        print(f"started {handle.workflow_id}; waiting (is a worker running?)")
        print(handle.result(timeout=REVIEW_DELAY + 60))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    finally:
        app.close()

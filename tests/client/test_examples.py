"""The runnable examples work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import ratchet

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def checkout(dsn, monkeypatch):
    monkeypatch.setenv("RATCHET_DATABASE_URL", dsn)
    monkeypatch.setenv("CHECKOUT_REVIEW_DELAY", "2.5")  # above the threshold: suspends
    spec = importlib.util.spec_from_file_location("examples_checkout", EXAMPLES / "checkout.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["examples_checkout"] = module
    spec.loader.exec_module(module)
    module.app.poll_interval = 0.2
    module.setup()
    yield module
    module.app.close()
    sys.modules.pop("examples_checkout", None)


def test_checkout_example(checkout, conn, run_worker):
    app = checkout.app
    ok = app.start(checkout.checkout, 1, "book", 2, 1999, workflow_id="order-1")
    short = app.start(checkout.checkout, 2, "book", 1000, 1999, workflow_id="order-2")
    run_worker(app)
    result = ok.result(timeout=30)
    assert result["status"] == "paid" and result["charge_id"].startswith("ch_")
    with pytest.raises(ratchet.WorkflowFailed) as err:
        short.result(timeout=30)
    assert err.value.type.endswith("OutOfStock")
    assert conn.execute("select available from stock").fetchone()["available"] == 98
    assert conn.execute("select count(*) as n from payments").fetchone()["n"] == 1
    assert conn.execute("select count(*) as n from emails").fetchone()["n"] == 2
    names = [s["name"] for s in ok.steps()]
    assert names == ["reserve_stock", "charge_payment", "mark_paid", "send_email", "sleep",
                     "send_email"]

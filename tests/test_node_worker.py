"""The SQL API is enough to build a client: a Node.js worker (examples/node/,
``pg`` + ``ratchet.*`` functions only) runs workflows from the same queue as
Python workers, and each language finishes what the other started.

The demo workflow ``polyglot_order`` exists in both languages with the same
semantics (examples/node/polyglot_order.{js,py}). Its input knobs give the
tests barriers instead of sleeps: ``hold_step``/``hold_file`` make a step's body
wait for a file, ``trace_file`` logs every step execution (not replays).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None, reason="`node` is not on PATH: the Node.js worker (examples/node) cannot run")

import ratchet  # noqa: E402  (tests/conftest.py puts python_client on sys.path)

Connection = psycopg.Connection[Any]


# ---------------------------------------------------------------- helpers


def poll(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
         logs: Callable[[], str] | None = None) -> Any:
    """Call ``cond`` every 20 ms until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{logs()}" if logs else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(0.02)


def load_polyglot_module() -> Any:
    """examples/node/polyglot_order.py, imported by path."""
    spec = importlib.util.spec_from_file_location("polyglot_order_py",
                                                  EXAMPLE / "polyglot_order.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_orders(conn: Connection, prefix: str, order_ids: list[int], **knobs: Any) -> list[str]:
    """Start one ``polyglot_order`` per order id (one round trip); returns the ids."""
    inputs = [json.dumps({"order_id": i, **knobs}) for i in order_ids]
    ids = [f"{prefix}-{i}" for i in order_ids]
    row = conn.execute(
        "select ratchet.start_workflows('polyglot_order', %s::jsonb[], workflow_ids => %s) as ids",
        [inputs, ids]).fetchone()
    assert row is not None and row["ids"] == ids
    return ids


def workflows(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = conn.execute("select * from ratchet.workflows where workflow_id = any(%s)",
                        [ids]).fetchall()
    return {r["workflow_id"]: r for r in rows}


def steps_of(conn: Connection, workflow_id: str) -> list[dict[str, Any]]:
    return conn.execute("select * from ratchet.get_steps(%s)", [workflow_id]).fetchall()


def count_status(conn: Connection, ids: list[str], status: str) -> int:
    row = conn.execute("select count(*) as n from ratchet.workflows "
                       "where workflow_id = any(%s) and status = %s", [ids, status]).fetchone()
    assert row is not None
    return int(row["n"])


def running_ids(conn: Connection, worker_id: str) -> list[str]:
    rows = conn.execute("select workflow_id from ratchet.workflows "
                        "where status = 'running' and worker_id = %s order by 1",
                        [worker_id]).fetchall()
    return [r["workflow_id"] for r in rows]


def trace_lines(path: Path) -> list[tuple[str, str, str]]:
    """``(language, idempotency key, step)`` per step execution."""
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


def expected_output(order_id: int, by: list[str]) -> dict[str, Any]:
    return {"order_id": order_id, "charge": f"charge-{order_id}", "by": by}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def node_worker_js() -> Path:
    """examples/node/ratchet-worker.js, with its npm dependencies installed."""
    if not (EXAMPLE / "node_modules" / "pg" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("examples/node/node_modules is missing and `npm` is not on PATH")
        cmd = [npm, "ci" if (EXAMPLE / "package-lock.json").exists() else "install",
               "--no-audit", "--no-fund"]
        proc = subprocess.run(cmd, cwd=EXAMPLE, capture_output=True, text=True, timeout=300,
                              check=False)
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` in {EXAMPLE} failed:\n{proc.stdout}\n{proc.stderr}")
    return EXAMPLE / "ratchet-worker.js"


class Proc:
    """A worker subprocess with its log file."""

    def __init__(self, popen: subprocess.Popen[str], log: Path) -> None:
        self.popen = popen
        self.log = log

    def text(self) -> str:
        return f"--- {self.log.name} ---\n{self.log.read_text()}"


@pytest.fixture
def spawn(dsn: str, tmp_path: Path, node_worker_js: Path) -> Iterator[Callable[..., Proc]]:
    """``spawn("node"|"python", worker_id, *args)``: a worker subprocess on the test
    database; SIGKILLed at teardown if still running."""
    procs: list[Proc] = []

    def start(language: str, worker_id: str, *args: str) -> Proc:
        log = tmp_path / f"{worker_id}.log"
        env = dict(os.environ)
        if language == "node":
            # The libpq keyword DSN as is: the worker parses both forms.
            cmd = [str(NODE), str(node_worker_js), "--dsn", dsn, "--worker-id", worker_id,
                   "--poll-interval", "0.2", *args]
        else:
            # ratchet's CLI generates worker ids itself; worker_id only names the log.
            env["RATCHET_DATABASE_URL"] = dsn
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(ROOT / "python_client"), env.get("PYTHONPATH")) if p)
            cmd = [sys.executable, "-m", "ratchet", "worker", "polyglot_order:app",
                   "--poll-interval", "0.2", *args]
        with open(log, "w") as out:
            popen = subprocess.Popen(cmd, cwd=EXAMPLE, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        proc = Proc(popen, log)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(10)


@pytest.fixture
def python_worker(dsn: str) -> Iterator[Callable[..., ratchet.Worker]]:
    """``python_worker(worker_id, **kw)``: a Python-client worker for ``polyglot_order``
    running in a thread; stopped at teardown."""
    module = load_polyglot_module()
    started: list[tuple[ratchet.App, ratchet.Worker, threading.Thread]] = []

    def start(worker_id: str, **kw: Any) -> ratchet.Worker:
        app = module.make_app(dsn, poll_interval=0.2)
        kw.setdefault("concurrency", 2)
        kw.setdefault("lease", 10.0)
        worker = ratchet.Worker(app, ["default"], install_signal_handlers=False,
                                grace_period=1.0, worker_id=worker_id, **kw)
        thread = threading.Thread(target=worker.run, daemon=True, name=worker_id)
        thread.start()
        assert worker.wait_started(10)
        started.append((app, worker, thread))
        return worker

    yield start
    for _, worker, _ in started:
        worker.stop()
        worker.stop()  # skip the grace period: held steps never end
    for app, _, thread in started:
        thread.join(15)
        app.close()


# ---------------------------------------------------------------- tests


def test_node_worker_alone(conn: Connection, spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """20 workflows, only the Node worker: right results, 3 checkpoints each, every
    step executed once; it exits by itself when idle."""
    trace = tmp_path / "trace"
    ids = start_orders(conn, "alone", list(range(20)), trace_file=str(trace))
    node = spawn("node", "node-a", "--concurrency", "4", "--lease", "10",
                 "--exit-when-idle", "1")

    poll(lambda: count_status(conn, ids, "succeeded") == 20, 30, "20 succeeded workflows",
         node.text)
    assert node.popen.wait(15) == 0, node.text()

    rows = workflows(conn, ids)
    for i, wf_id in enumerate(ids):
        wf = rows[wf_id]
        assert wf["output"] == expected_output(i, ["node"])
        assert wf["attempts"] == 1 and wf["run_id"] is None
        steps = steps_of(conn, wf_id)
        assert [(s["step_id"], s["name"]) for s in steps] == \
            [(0, "reserve"), (1, "charge"), (2, "ship")]
        assert [s["output"] for s in steps] == \
            [{"reserved": i, "by": "node"}, f"charge-{i}", {"shipped": True, "by": "node"}]
        assert all(s["error"] is None for s in steps)
        assert len({s["run_id"] for s in steps}) == 1
    executed = trace_lines(trace)
    assert len(executed) == 60 and len({key for _, key, _ in executed}) == 60
    assert {lang for lang, _, _ in executed} == {"node"}


def test_node_and_python_side_by_side(conn: Connection, spawn: Callable[..., Proc],
                                      python_worker: Callable[..., ratchet.Worker],
                                      tmp_path: Path) -> None:
    """40 workflows on one queue, a Node and a Python worker at once: each
    workflow is run by exactly one run of one worker, and both languages work.

    No timing luck: every ``reserve`` waits for a gate file. The Node worker
    (concurrency 2) claims two and blocks; then the Python worker claims two
    others and blocks; only then does the gate open.
    """
    gate = tmp_path / "gate"
    trace = tmp_path / "trace"
    ids = start_orders(conn, "side", list(range(40)), hold_step="reserve",
                       hold_file=str(gate), trace_file=str(trace))
    node = spawn("node", "node-b", "--concurrency", "2", "--lease", "10")
    node_first = poll(lambda: len(ids_ := running_ids(conn, "node-b")) == 2 and ids_, 15,
                      "the Node worker to claim 2 workflows", node.text)
    python_worker("py-b", concurrency=2)
    py_first = poll(lambda: len(ids_ := running_ids(conn, "py-b")) == 2 and ids_, 15,
                    "the Python worker to claim 2 workflows", node.text)
    assert not set(node_first) & set(py_first)
    gate.touch()

    poll(lambda: count_status(conn, ids, "succeeded") == 40, 40, "40 succeeded workflows",
         node.text)
    node.popen.send_signal(signal.SIGTERM)
    assert node.popen.wait(15) == 0, node.text()

    rows = workflows(conn, ids)
    by_language: dict[str, list[str]] = {"node": [], "python": []}
    for i, wf_id in enumerate(ids):
        wf = rows[wf_id]
        (language,) = wf["output"]["by"]
        by_language[language].append(wf_id)
        assert wf["output"] == expected_output(i, [language])
        # claimed once: one attempt, and every checkpoint written by that one run
        assert wf["attempts"] == 1, wf
        steps = steps_of(conn, wf_id)
        assert [s["name"] for s in steps] == ["reserve", "charge", "ship"]
        assert len({s["run_id"] for s in steps}) == 1
        assert steps[0]["output"] == {"reserved": i, "by": language}
    assert set(node_first) <= set(by_language["node"])
    assert set(py_first) <= set(by_language["python"])

    executed = trace_lines(trace)
    assert len(executed) == 120, "each step of each workflow executed exactly once"
    assert len({key for _, key, _ in executed}) == 120
    language_of = {wf_id: lang for lang, wf_ids in by_language.items() for wf_id in wf_ids}
    for lang, key, _ in executed:
        assert language_of[key.rsplit(":", 1)[0]] == lang


def _crash_handoff(conn: Connection, tmp_path: Path, first: Callable[[], Proc],
                   second: Callable[[], Any], first_lang: str, second_lang: str) -> None:
    """``first`` records ``reserve`` then hangs in ``charge`` and is SIGKILLed;
    ``second`` reclaims the workflow once the lease expired and finishes it,
    replaying ``reserve`` from the other language's checkpoint."""
    hold = tmp_path / "hold-charge"
    trace = tmp_path / "trace"
    (wf_id,) = start_orders(conn, "handoff", [7], hold_step="charge", hold_file=str(hold),
                            trace_file=str(trace))
    proc = first()
    poll(lambda: [s["name"] for s in steps_of(conn, wf_id)] == ["reserve"], 15,
         f"{first_lang} to record reserve", proc.text)
    poll(lambda: (first_lang, f"{wf_id}:1", "charge") in trace_lines(trace), 15,
         f"{first_lang} to be stuck in charge", proc.text)
    # While it hangs in charge, its heartbeats (every lease/3) keep renewing the lease.
    lease = workflows(conn, [wf_id])[wf_id]["lease_expires_at"]
    poll(lambda: workflows(conn, [wf_id])[wf_id]["lease_expires_at"] > lease, 5,
         f"a heartbeat from {first_lang}", proc.text)
    proc.popen.kill()
    proc.popen.wait(10)
    (reserve,) = steps_of(conn, wf_id)
    assert reserve["output"] == {"reserved": 7, "by": first_lang}
    assert workflows(conn, [wf_id])[wf_id]["status"] == "running"  # a dead worker's lease
    hold.touch()  # charge no longer blocks (the killed worker was stuck in it)

    second()  # claims the workflow as soon as its 2-second lease has expired
    poll(lambda: count_status(conn, [wf_id], "succeeded") == 1, 20,
         f"{second_lang} to finish the workflow", proc.text)

    wf = workflows(conn, [wf_id])[wf_id]
    assert wf["output"] == expected_output(7, [first_lang, second_lang])
    assert wf["attempts"] == 2  # the first claim and the recovery
    steps = steps_of(conn, wf_id)
    assert [s["name"] for s in steps] == ["reserve", "charge", "ship"]
    assert steps[0]["run_id"] == reserve["run_id"]
    assert steps[1]["run_id"] == steps[2]["run_id"] != reserve["run_id"]
    assert steps[1]["output"] == "charge-7"
    assert steps[2]["output"] == {"shipped": True, "by": second_lang}

    executed = trace_lines(trace)
    assert [(lang, key) for lang, key, step in executed if step == "reserve"] == \
        [(first_lang, f"{wf_id}:0")], "reserve ran once, replayed from the checkpoint"
    assert [lang for lang, _, step in executed if step == "charge"] == [first_lang, second_lang]
    assert [lang for lang, _, step in executed if step == "ship"] == [second_lang]


def test_crash_handoff_node_to_python(conn: Connection, spawn: Callable[..., Proc],
                                      python_worker: Callable[..., ratchet.Worker],
                                      tmp_path: Path) -> None:
    _crash_handoff(
        conn, tmp_path,
        first=lambda: spawn("node", "node-c", "--concurrency", "1", "--lease", "2"),
        second=lambda: python_worker("py-c", concurrency=1),
        first_lang="node", second_lang="python")


def test_crash_handoff_python_to_node(conn: Connection, spawn: Callable[..., Proc],
                                      tmp_path: Path) -> None:
    node: list[Proc] = []

    def second() -> None:
        node.append(spawn("node", "node-d", "--concurrency", "1", "--lease", "10"))

    _crash_handoff(
        conn, tmp_path,
        first=lambda: spawn("python", "py-d", "--concurrency", "1", "--lease", "2"),
        second=second, first_lang="python", second_lang="node")
    node[0].popen.send_signal(signal.SIGTERM)
    assert node[0].popen.wait(15) == 0, node[0].text()


def test_notification_wakes_an_idle_node_worker(conn: Connection, spawn: Callable[..., Proc]
                                                ) -> None:
    """With a 30-second poll interval, a workflow started while the Node worker
    waits is claimed at once: the start's NOTIFY on "ratchet.queue.default"
    ends the wait."""
    node = spawn("node", "node-n", "--log-level", "debug", "--poll-interval", "30")
    # Its log says when it goes to sleep; after that only a notification (or
    # the 30 s poll) can make it claim again.
    poll(lambda: "waiting up to 30000 ms for work" in node.log.read_text(), 15,
         "the Node worker to wait", node.text)
    started = time.monotonic()
    (wf_id,) = start_orders(conn, "notified", [1])
    poll(lambda: count_status(conn, [wf_id], "succeeded") == 1, 10,
         "the notified worker to run the workflow", node.text)
    assert time.monotonic() - started < 10
    node.popen.send_signal(signal.SIGTERM)
    assert node.popen.wait(15) == 0, node.text()


def test_sigterm_releases_in_flight_work(conn: Connection, spawn: Callable[..., Proc],
                                         python_worker: Callable[..., ratchet.Worker],
                                         tmp_path: Path) -> None:
    """SIGTERM: the Node worker stops claiming, gives its stuck workflow a grace
    period, then releases it with suspend(until => now()) (long before the
    30-second lease would expire); a Python worker then runs it from the start."""
    gate = tmp_path / "gate"
    (wf_id,) = start_orders(conn, "term", [3], hold_step="reserve", hold_file=str(gate))
    node = spawn("node", "node-e", "--concurrency", "1", "--lease", "30",
                 "--grace-period", "0.5")
    poll(lambda: running_ids(conn, "node-e") == [wf_id], 15, "the Node worker to claim it",
         node.text)
    node.popen.send_signal(signal.SIGTERM)
    assert node.popen.wait(15) == 0, node.text()
    wf = workflows(conn, [wf_id])[wf_id]
    assert (wf["status"], wf["run_id"], wf["worker_id"]) == ("enqueued", None, None)
    assert steps_of(conn, wf_id) == []
    assert "released workflow" in node.text()

    gate.touch()
    python_worker("py-e", concurrency=1)
    poll(lambda: count_status(conn, [wf_id], "succeeded") == 1, 15, "Python to finish it")
    assert workflows(conn, [wf_id])[wf_id]["output"] == expected_output(3, ["python"])


def test_non_determinism_fails_the_run(conn: Connection, spawn: Callable[..., Proc]) -> None:
    """A recorded step 0 named differently from what the code calls: the Node
    worker fails the workflow for good (no retry) with NonDeterminismError."""
    (wf_id,) = start_orders(conn, "nondet", [5])
    # A worker made of plain SQL records step 0 under another name, then lets go.
    row = conn.execute("select run_id from ratchet.claim(array['default'], 'sql-worker')"
                       ).fetchone()
    assert row is not None
    conn.execute("select ratchet.record_step(%s, %s, 0, 'reserve_v0', output => '{}')",
                 [wf_id, row["run_id"]])
    conn.execute("select ratchet.suspend(%s, %s, until => ratchet.now())", [wf_id, row["run_id"]])

    node = spawn("node", "node-f", "--exit-when-idle", "1")
    poll(lambda: count_status(conn, [wf_id], "failed") == 1, 15, "the workflow to fail",
         node.text)
    assert node.popen.wait(15) == 0, node.text()
    wf = workflows(conn, [wf_id])[wf_id]
    assert wf["error"]["type"] == "NonDeterminismError"
    assert '"reserve_v0"' in wf["error"]["message"] and '"reserve"' in wf["error"]["message"]
    assert [s["name"] for s in steps_of(conn, wf_id)] == ["reserve_v0"]


NODE_EXTRA_WORKFLOWS = """
'use strict';
// Test-only workflows for the Node worker: durable sleep, step errors, retries.
module.exports.register = (worker) => {
  worker.workflow('node_sleeper', async (ctx, input) => {
    const before = await ctx.step('before', async () => ctx.runId);
    await ctx.sleep(input.seconds);
    const key = await ctx.step('after', async () => ctx.stepIdempotencyKey);
    return { before, key, attempt: ctx.attempt };
  });
  worker.workflow('node_flaky', async (ctx) => {
    try {
      await ctx.step('charge_card', async () => { throw new Error('card declined'); });
    } catch (err) {
      if (ctx.attempt === 1) throw err;  // first run fails: retried
      return { attempt: ctx.attempt, replayed: err.name, message: err.error.message };
    }
    return 'unreachable';
  }, { retries: 2, retryInterval: 0.1 });
};
"""


def test_node_sleep_step_errors_and_retries(conn: Connection, spawn: Callable[..., Proc],
                                            tmp_path: Path) -> None:
    """Durable sleep (short: in process; long: suspend and resume in a new run),
    a failed step recorded and raised again on replay, and a workflow retry."""
    module = tmp_path / "extra_workflows.js"
    module.write_text(NODE_EXTRA_WORKFLOWS)
    for wf_id, name, inp in (("nap", "node_sleeper", {"seconds": 0.2}),
                             ("long-sleep", "node_sleeper", {"seconds": 2.5}),
                             ("flaky", "node_flaky", {})):
        conn.execute("select ratchet.start_workflow(%s, %s::jsonb, workflow_id => %s)",
                     [name, json.dumps(inp), wf_id])
    node = spawn("node", "node-g", "--concurrency", "4", "--lease", "10",
                 "--workflows", str(module))
    ids = ["nap", "long-sleep", "flaky"]
    poll(lambda: count_status(conn, ids, "succeeded") == 3, 20, "3 succeeded workflows",
         node.text)
    node.popen.send_signal(signal.SIGTERM)
    assert node.popen.wait(15) == 0, node.text()
    rows = workflows(conn, ids)

    nap = steps_of(conn, "nap")
    assert [s["name"] for s in nap] == ["before", "sleep", "after"]
    assert len({s["run_id"] for s in nap}) == 1  # slept in process
    assert rows["nap"]["output"]["key"] == "nap:2"

    slept = steps_of(conn, "long-sleep")
    assert [s["name"] for s in slept] == ["before", "sleep", "after"]
    assert slept[0]["run_id"] == slept[1]["run_id"] != slept[2]["run_id"]  # suspended
    out = rows["long-sleep"]["output"]
    assert out["before"] == str(slept[0]["run_id"]) and out["key"] == "long-sleep:2"
    assert rows["long-sleep"]["attempts"] >= 1

    flaky = steps_of(conn, "flaky")
    assert [(s["name"], s["output"], s["error"]["message"]) for s in flaky] == \
        [("charge_card", None, "card declined")]
    assert rows["flaky"]["output"] == {"attempt": 2, "replayed": "StepError",
                                       "message": "card declined"}


# ---------------------------------------------------------------- hostile inputs

#: Inputs that are valid JSONB but hostile to a client: stored by the owner
#: (bypassing start_workflow's checks, as data of an old version would be).
HOSTILE_INPUTS: dict[str, str] = {
    "deep": "[" * 5000 + "]" * 5000,                       # RecursionError in Python
    "deep-object": '{"a":' * 3000 + "1" + "}" * 3000,
    "huge-string": json.dumps({"order_id": 1, "pad": "x" * 900_000}),
    "beyond-float": '{"order_id": 1e400}',                  # inf in Python, Infinity in JS
    "negative-beyond-float": '{"order_id": -1e400, "x": 1e-400}',
    "escaped-surrogate-text": json.dumps({"order_id": 2, "s": "\\ud800 \\udfff"}),
    "unicode": json.dumps({"order_id": 3, "s": "\U0001F600\u200b\u202e\ufeff"}),
    "wrong-shape": '"just a string"',
    "null": "null",
}


@pytest.mark.parametrize("language", ["node", "python"])
def test_hostile_inputs_never_stop_a_worker(conn: Connection, spawn: Callable[..., Proc],
                                            language: str) -> None:
    # Invalid UTF-16 escapes never get in: PostgreSQL refuses them before Ratchet runs.
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("select ratchet.start_workflow('polyglot_order', input => %s::jsonb)",
                     ['{"s": "\\ud800"}'])
    for wid, doc in HOSTILE_INPUTS.items():
        conn.execute(
            "insert into ratchet.workflows (workflow_id, name, queue, input, start_at, "
            "created_at, updated_at) values (%s, 'polyglot_order', 'default', %s::jsonb, "
            "now(), now(), now())", [wid, doc])
    normal = start_orders(conn, "normal", [10, 11, 12])
    proc = spawn(language, f"{language}-hostile", "--concurrency", "16")
    ids = [*HOSTILE_INPUTS, *normal]
    poll(lambda: count_status(conn, ids, "enqueued") + count_status(conn, ids, "running") == 0,
         timeout=60, what="every hostile workflow to end", logs=proc.text)
    rows = {r["workflow_id"]: r for r in conn.execute(  # not the inputs: the test decodes too
        "select workflow_id, status, error, attempts from ratchet.workflows "
        "where workflow_id = any(%s)", [ids]).fetchall()}
    for wid in ids:
        row = rows[wid]
        # it succeeded (the input is valid JSON for this client), or it ended
        # with a stored error; never left running or crash-looping
        assert row["status"] in ("succeeded", "failed"), (wid, row["status"], row["error"])
        if row["status"] == "failed":
            assert row["error"] and row["error"].get("message"), (wid, row)
        assert row["attempts"] == 1, (wid, row["attempts"], row["error"])
    for wid in normal:
        assert rows[wid]["status"] == "succeeded"
    if language == "python":
        assert rows["deep"]["error"]["type"] == "UndecodableInput"
    assert proc.popen.poll() is None, proc.text()  # still up, and still serving:
    [late] = start_orders(conn, "late", [13])
    poll(lambda: count_status(conn, [late], "succeeded") == 1, timeout=30,
         what="a workflow started after the hostile ones", logs=proc.text)


def test_node_infrastructure_error_is_never_a_step_error(conn: Connection,
                                                        spawn: Callable[..., Proc]) -> None:
    # The first checkpoint insert fails like a pooler's duplicate prepared
    # statement: Ratchet's plumbing, not the workflow's failure.
    conn.execute("create sequence fault_seq")
    conn.execute("""
        create function fault() returns trigger language plpgsql as $$
        begin
          if pg_catalog.nextval('public.fault_seq') = 1 then
            raise exception using errcode = '42P05', message = 'induced fault';
          end if;
          return new;
        end $$""")
    conn.execute("create trigger fault before insert on ratchet.steps "
                 "for each row execute function fault()")
    [wid] = start_orders(conn, "infra", [7])
    proc = spawn("node", "node-infra")
    poll(lambda: count_status(conn, [wid], "succeeded") == 1, timeout=30,
         what="the workflow to succeed after the fault", logs=proc.text)
    row = conn.execute("select error, attempts from ratchet.workflows where workflow_id = %s",
                       [wid]).fetchone()
    assert row == {"error": None, "attempts": 1}, row
    errors = conn.execute("select count(*) as n from ratchet.steps where error is not null"
                          ).fetchone()
    assert errors == {"n": 0}
    assert "releasing the run" in proc.log.read_text()


def test_node_worker_through_pgbouncer(conn: Connection, spawn: Callable[..., Proc],
                                       pg_server: Any, dsn: str, tmp_path: Path) -> None:
    """200 workflows through pgbouncer in transaction mode, once with a direct
    --listen-dsn and once --pooled (polling): every step runs once, no LISTEN
    ever reaches a pooled server connection."""
    from pooler import PGBOUNCER, PgBouncer

    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (Debian: pgbouncer)")
    dbname = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    trace = tmp_path / "trace"
    with PgBouncer(pg_server, pool_size=3) as bouncer:
        pooled = bouncer.dsn(dbname)
        runs = [("direct", ["--listen-dsn", dsn + " application_name=node-listen"]),
                ("polling", ["--pooled"])]
        all_ids = []
        for label, extra in runs:
            ids = start_orders(conn, f"pooled-{label}", list(range(100)), trace_file=str(trace))
            all_ids += ids
            node = spawn("node", f"node-{label}", "--concurrency", "6", "--dsn", pooled,
                         "--exit-when-idle", "1", *extra)
            poll(lambda ids=ids: count_status(conn, ids, "succeeded") == 100, 90,
                 f"100 succeeded ({label})", node.text)
            listeners = conn.execute(
                "select application_name from pg_stat_activity where query ilike 'listen %%'"
                " and pid <> pg_backend_pid()").fetchall()
            assert {r["application_name"] for r in listeners} <= {"node-listen"}, listeners
            assert node.popen.wait(15) == 0, node.text()
    executed = trace_lines(trace)
    assert len(executed) == 600 and len({key for _, key, _ in executed}) == 600
    assert count_status(conn, all_ids, "succeeded") == 200


def test_node_checkpoint_cut_off_by_terminated_backend_is_retried_on_the_same_run(
        conn: Connection, spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """The backend of the Node worker's checkpoint of ``charge`` is terminated
    while the write is in flight (a trigger holds it): the worker reconnects and
    sends the same write again within its lease. The workflow finishes on the
    run that started it and every step body ran once."""
    conn.execute("create table fault_done (done boolean)")
    conn.execute("""
      create function hold_charge_checkpoint() returns trigger language plpgsql as $$
      begin
        if new.name = 'charge' and not exists (select from public.fault_done) then
          perform pg_sleep(30);
        end if;
        return new;
      end $$;
      create trigger hold_charge_checkpoint before insert on ratchet.steps
        for each row execute function hold_charge_checkpoint()""")
    trace = tmp_path / "trace"
    (wf_id,) = start_orders(conn, "cut", [7], trace_file=str(trace))
    node = spawn("node", "node-cut", "--concurrency", "1", "--lease", "10")
    pid = poll(lambda: conn.execute(
        "select pid from pg_stat_activity where wait_event = 'PgSleep'"
        " and query like '%%record_step%%'").fetchone(), 15,
        "the checkpoint of charge to be in flight", node.text)["pid"]
    conn.execute("insert into fault_done values (true)")
    conn.execute("select pg_terminate_backend(%s)", [pid])
    poll(lambda: count_status(conn, [wf_id], "succeeded") == 1, 20, "the workflow to finish",
         node.text)
    assert workflows(conn, [wf_id])[wf_id]["output"] == expected_output(7, ["node"])
    runs = conn.execute("select run_id, outcome from ratchet.runs where workflow_id = %s",
                        [wf_id]).fetchall()
    assert [r["outcome"] for r in runs] == ["succeeded"], node.text()
    assert {s["run_id"] for s in steps_of(conn, wf_id)} == {runs[0]["run_id"]}
    assert [step for _, _, step in trace_lines(trace)] == ["reserve", "charge", "ship"]
    assert "retrying" in node.text()

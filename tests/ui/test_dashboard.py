"""The dashboard in a real headless Chromium against a real database and server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from conftest import SHOTS

expect = pytest.importorskip(
    "playwright.sync_api",
    reason="the dashboard tests need Playwright for Python (pip install playwright; "
           "the system Chromium is used, no browser download)").expect

Conn = psycopg.Connection[Any]
STATUSES = ("enqueued", "running", "succeeded", "failed", "cancelled", "dead")


def db_counts(conn: Conn) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for r in conn.execute("select status, count(*) as n from ratchet.workflows group by status"):
        counts[r["status"]] = int(r["n"])
    return counts


def one(conn: Conn, sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def test_overview_counts_match_the_database(conn: Conn, demo: dict[str, int],
                                            ui_server: Callable[..., str], page: Any) -> None:
    url = ui_server(conn.info.dsn)
    page.goto(url + "/")
    counts = db_counts(conn)
    assert all(counts[s] > 0 for s in STATUSES), counts
    for status, n in counts.items():
        expect(page.locator(f"#count-{status}")).to_have_text(str(n))
    expect(page.locator("#count-total")).to_have_text(str(sum(counts.values())))
    # queue depth per queue matches the queue's due enqueued workflows
    due = one(conn, "select count(*) from ratchet.workflows where queue = 'reports' "
                    "and status = 'enqueued' and start_at <= now()")
    expect(page.locator("#queues tr[data-queue=reports] td.due")).to_have_text(str(due))
    # live workers are the lease holders
    expect(page.locator("#workers")).to_contain_text("mailer-1")
    assert page.locator("#throughput svg rect").count() > 0


def test_filters_and_keyset_pagination(conn: Conn, demo: dict[str, int],
                                       ui_server: Callable[..., str], page: Any) -> None:
    url = ui_server(conn.info.dsn)
    page.goto(url + "/workflows")
    page.fill("input[name=name]", "checkout")
    page.check("input[name=status][value=failed]")
    page.click("#apply")
    rows = page.locator("#workflow-list tr.wf")
    expected = one(conn, "select count(*) from ratchet.workflows "
                         "where name = 'checkout' and status = 'failed'")
    assert expected > 0
    expect(rows).to_have_count(expected)
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.status)")) == {"failed"}

    # every page, following "next", lists each workflow once, newest first
    ids: list[str] = []
    page.goto(url + "/workflows?limit=25")
    while True:
        ids += page.locator("#workflow-list tr.wf").evaluate_all(
            "rs => rs.map(r => r.dataset.id)")
        nxt = page.locator("#next-page")
        if nxt.count() == 0:
            break
        nxt.click()
        page.wait_for_load_state()
    want = [r["workflow_id"] for r in conn.execute(
        "select workflow_id from ratchet.workflows order by created_at desc, workflow_id desc")]
    assert ids == want

    # id search and a time range
    some = want[7]
    page.goto(url + "/workflows?q=" + quote(some))
    expect(page.locator("#workflow-list tr.wf")).to_have_count(1)
    page.goto(url + "/workflows?since=2999-01-01")
    expect(page.locator("#no-rows")).to_be_visible()


@pytest.mark.parametrize("query, message", [
    ("status=bogus", "unknown status 'bogus'"),
    ("since=yesterday", "since must be a date or time"),
    ("limit=7", "limit must be one of"),
    ("after=not-a-cursor", "the page cursor is not valid"),
    ("q=' or 1=1 --", "no workflow matches"),
])
def test_bad_filters_get_a_clear_message(conn: Conn, ui_server: Callable[..., str], page: Any,
                                         query: str, message: str) -> None:
    url = ui_server(conn.info.dsn)
    response = page.goto(url + "/workflows?" + query)
    expect(page.locator("main")).to_contain_text(message)
    assert "Traceback" not in page.content()
    assert response.status in (200, 400)


def test_workflow_page_shows_timeline_explain_and_details(
        conn: Conn, demo: dict[str, int], ui_server: Callable[..., str], page: Any) -> None:
    url = ui_server(conn.info.dsn)
    waiting = one(conn, "select workflow_id from ratchet.workflows where wait_for = 'message' "
                        "order by created_at limit 1")
    page.goto(url + "/workflows/" + quote(waiting))
    steps = one(conn, "select count(*) from ratchet.steps where workflow_id = %s", [waiting])
    expect(page.locator("#timeline svg rect.step")).to_have_count(steps)
    expect(page.locator("#explain li[data-reason=waiting_message]")).to_contain_text("'approved'")

    parent = one(conn, "select workflow_id from ratchet.workflows where wait_for = 'child' "
                       "order by created_at limit 1")
    child = one(conn, "select workflow_id from ratchet.workflows where parent_id = %s", [parent])
    page.goto(url + "/workflows/" + quote(parent))
    expect(page.locator("#explain li[data-reason=waiting_child]")).to_contain_text(child)
    expect(page.locator("#children")).to_contain_text(child)
    expect(page.locator("#events")).to_contain_text("progress")
    expect(page.locator("#messages")).to_contain_text("ops")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "workflow-page-waiting-for-child.png"), full_page=True)
    page.click(f"#children a:has-text('{child}')")
    expect(page.locator("#parent")).to_have_text(parent)

    failed = one(conn, "select workflow_id from ratchet.workflows where status = 'failed' "
                       "order by created_at limit 1")
    page.goto(url + "/workflows/" + quote(failed))
    expect(page.locator("#traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#timeline svg rect.step.failed")).to_have_count(1)
    page.screenshot(path=str(SHOTS / "workflow-page-failed.png"), full_page=True)
    expect(page.locator("#explain")).to_have_count(0)

    response = page.goto(url + "/workflows/no-such-workflow")
    assert response.status == 404
    expect(page.locator("#error-message")).to_contain_text("no workflow with id")


def test_pages_update_live_without_reload(conn: Conn, ui_server: Callable[..., str],
                                          page: Any) -> None:
    url = ui_server(conn.info.dsn)
    wid = one(conn, "select ratchet.start_workflow('live') as id")
    page.goto(url + "/workflows/" + quote(wid))
    expect(page.locator("#live-status")).to_have_text("● live")
    expect(page.locator("#wf-status")).to_have_text("enqueued")
    page.evaluate("window.__marker = 'same page'")
    run_id = one(conn, "select run_id from ratchet.claim(array['default'], 'w-live')")
    expect(page.locator("#wf-status")).to_have_text("running")
    conn.execute("select ratchet.record_step(%s, %s, 0, 'first', output => '1')", [wid, run_id])
    conn.execute("select ratchet.finish(%s, %s, '\"done\"')", [wid, run_id])
    expect(page.locator("#wf-status")).to_have_text("succeeded")
    expect(page.locator("#timeline svg rect.step")).to_have_count(1)
    assert page.evaluate("window.__marker") == "same page"  # no reload

    page.goto(url + "/")
    before = int(page.locator("#count-succeeded").inner_text())
    other = one(conn, "select ratchet.start_workflow('live') as id")
    [c] = conn.execute("select * from ratchet.claim_workflow(%s, 'w-live')", [other]).fetchall()
    conn.execute("select ratchet.finish(%s, %s, '1')", [other, c["run_id"]])
    expect(page.locator("#count-succeeded")).to_have_text(str(before + 1))


def test_actions_are_off_by_default(conn: Conn, ui_server: Callable[..., str],
                                    page: Any) -> None:
    url = ui_server(conn.info.dsn)
    wid = one(conn, "select ratchet.start_workflow('x') as id")
    page.goto(url + "/workflows/" + quote(wid))
    expect(page.locator("form.action-cancel")).to_have_count(0)
    r = page.request.post(url + "/actions/cancel/" + quote(wid), form={"csrf": "x"})
    assert r.status == 404
    assert one(conn, "select status from ratchet.workflows where workflow_id = %s",
               [wid]) == "enqueued"


def test_actions_need_the_token_and_the_csrf_token(conn: Conn, ui_server: Callable[..., str],
                                                   page: Any) -> None:
    url = ui_server(conn.info.dsn, actions=True, token="s3cret")
    wid = one(conn, "select ratchet.start_workflow('x') as id")

    def status(w: str = wid) -> str:
        return str(one(conn, "select status from ratchet.workflows where workflow_id = %s", [w]))

    # not signed in: the button is there, the action is refused
    page.goto(url + "/workflows/" + quote(wid))
    page.click("form.action-cancel button")
    expect(page.locator("#error-message")).to_contain_text("sign in")
    assert status() == "enqueued"
    # a wrong token does not sign in
    page.goto(url + "/login")
    page.fill("#token", "wrong")
    page.click("#sign-in")
    expect(page.locator("#error-message")).to_have_text("wrong token")
    # signed in but without the CSRF token (a forged cross-site form post)
    page.goto(url + "/login?next=/workflows/" + quote(wid))
    page.fill("#token", "s3cret")
    page.click("#sign-in")
    expect(page.locator("form.action-cancel")).to_have_count(1)
    r = page.request.post(url + "/actions/cancel/" + quote(wid), form={})
    assert r.status == 403 and "CSRF" in r.text()
    r = page.request.post(url + "/actions/cancel/" + quote(wid), form={"csrf": "0" * 64})
    assert r.status == 403
    assert status() == "enqueued"
    # with it: cancel, resume, fork
    page.click("form.action-cancel button")
    expect(page.locator("#wf-status")).to_have_text("cancelled")
    assert status() == "cancelled"
    page.click("form.action-resume button")
    expect(page.locator("#wf-status")).to_have_text("enqueued")
    assert status() == "enqueued"
    [c] = conn.execute("select * from ratchet.claim_workflow(%s, 'w')", [wid]).fetchall()
    conn.execute("select ratchet.record_step(%s, %s, 0, 'a', output => '1')", [wid, c["run_id"]])
    conn.execute("select ratchet.record_step(%s, %s, 1, 'b', output => '2')", [wid, c["run_id"]])
    conn.execute("select ratchet.finish(%s, %s, '1')", [wid, c["run_id"]])
    page.goto(url + "/workflows/" + quote(wid))
    page.fill("form.action-fork input[name=from_step]", "1")
    page.click("form.action-fork button")
    expect(page).not_to_have_url(url + "/workflows/" + quote(wid))
    fork = one(conn, "select workflow_id from ratchet.workflows where forked_from = %s", [wid])
    assert page.url.endswith(quote(fork))
    assert one(conn, "select count(*) from ratchet.steps where workflow_id = %s", [fork]) == 1
    # pause and resume a queue
    page.goto(url + "/queues")
    page.click("tr[data-queue=default] form.action-pause button")
    expect(page.locator("tr[data-queue=default] td.paused")).to_have_text("paused")
    assert one(conn, "select paused from ratchet.queues where name = 'default'") is True
    page.click("tr[data-queue=default] form.action-unpause button")
    expect(page.locator("tr[data-queue=default] td.paused")).to_have_text("no")
    assert one(conn, "select paused from ratchet.queues where name = 'default'") is False
    # a bearer token works for scripts (no cookie, no CSRF)
    other = one(conn, "select ratchet.start_workflow('x') as id")
    r = page.request.post(url + "/actions/cancel/" + quote(other), form={},
                          headers={"Authorization": "Bearer s3cret", "Cookie": ""})
    assert r.ok
    assert status(other) == "cancelled"


def test_read_only_role_with_select_only(conn: Conn, demo: dict[str, int],
                                         ui_server: Callable[..., str], page: Any) -> None:
    role = "ui_ro_" + uuid.uuid4().hex[:8]
    conn.execute(f"create role {role} login password 'ro'")
    try:
        conn.execute(f"grant usage on schema ratchet to {role}")
        conn.execute(f"grant select on all tables in schema ratchet to {role}")
        assert one(conn, "select has_function_privilege(%s, 'ratchet.cancel(text)', 'execute')",
                   [role]) is False
        dsn = psycopg.conninfo.make_conninfo(conn.info.dsn, user=role, password="ro")
        url = ui_server(dsn)
        page.goto(url + "/")
        expect(page.locator("#count-succeeded")).to_have_text(str(db_counts(conn)["succeeded"]))
        for path in ("/workflows", "/queues", "/schedules"):
            assert page.goto(url + path).status == 200
        waiting = one(conn, "select workflow_id from ratchet.workflows where wait_for = 'message' "
                            "limit 1")
        page.goto(url + "/workflows/" + quote(waiting))
        expect(page.locator("#timeline svg")).to_have_count(1)
        expect(page.locator("#explain")).to_contain_text("may not run ratchet.explain()")
        expect(page.locator("#live-status")).to_have_text("● live")
    finally:
        conn.execute(f"drop owned by {role}")
        conn.execute(f"drop role {role}")


def test_cli_refuses_actions_without_a_token(dsn: str) -> None:
    r = subprocess.run([sys.executable, "-m", "ratchet", "ui", "--dsn", dsn, "--actions"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RATCHET_UI_TOKEN": ""})
    assert r.returncode == 1
    assert "--actions needs --token" in r.stderr
    assert "Traceback" not in r.stderr

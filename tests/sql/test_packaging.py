"""Packaging, hygiene and plans: what makes the extension safe to install and cheap to run."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlhelp import claim, start

Conn = psycopg.Connection[Any]
ROOT = Path(__file__).resolve().parents[2]
SQL_OUT = ROOT / "python_client" / "ratchet" / "_sql"
VERSION = next(
    line.split("=", 1)[1].strip().strip("'\"")
    for line in (ROOT / "ratchet.control").read_text().splitlines()
    if line.split("=", 1)[0].strip() == "default_version"
)


def ratchet_functions(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        """
        select p.oid::regprocedure::text as signature, p.proname, p.proconfig,
               l.lanname, obj_description(p.oid, 'pg_proc') as comment
          from pg_proc p
          join pg_namespace n on n.oid = p.pronamespace
          join pg_language l on l.oid = p.prolang
         where n.nspname = 'ratchet'
         order by 1
        """
    ).fetchall()


def test_every_function_pins_search_path_and_has_a_comment(conn: Conn) -> None:
    functions = ratchet_functions(conn)
    assert len(functions) > 40
    # The hot-path functions also force generic plans (see sql/00_header.sql).
    generic = {"ratchet.start_workflow", "ratchet.claim", "ratchet.record_step", "ratchet.finish",
               "ratchet.record_steps", "ratchet.finish_many"}
    for fn in functions:
        expected = ["search_path=pg_catalog, pg_temp"]
        if fn["signature"].split("(")[0] in generic:
            expected.append("plan_cache_mode=force_generic_plan")
        assert fn["proconfig"] == expected, fn["signature"]
        assert fn["comment"], f"{fn['signature']} has no COMMENT ON FUNCTION"


def test_plpgsql_check_reports_nothing(conn: Conn) -> None:
    available = conn.execute(
        "select 1 from pg_available_extensions where name = 'plpgsql_check'"
    ).fetchone()
    if available is None:
        if os.environ.get("RATCHET_TEST_PG_BINDIR") or os.environ.get("RATCHET_TEST_PG", "15") != "15":
            # The npm server builds of the version matrix carry no plpgsql_check;
            # the lint runs on the system PostgreSQL 15 in the same `make test`.
            pytest.skip("plpgsql_check is not packaged for this test server (it runs on 15)")
        pytest.fail("plpgsql_check is not installed (Debian: postgresql-15-plpgsql-check)")
    conn.execute("create extension plpgsql_check")
    problems = conn.execute(
        """
        select p.oid::regprocedure::text as fn, c.lineno, c.level, c.message
          from pg_proc p
          join pg_namespace n on n.oid = p.pronamespace,
               lateral plpgsql_check_function_tb(p.oid, fatal_errors => false) c
         where n.nspname = 'ratchet'
           and p.prolang = (select oid from pg_language where lanname = 'plpgsql')
        """
    ).fetchall()
    # _fence returns the locked row and the outcome as two OUT parameters on
    # purpose (one composite, one text): the extra check would want one only.
    problems = [p for p in problems
                if not (p["fn"].startswith("ratchet._fence(") and p["level"] == "warning extra"
                        and p["message"].startswith("composite OUT variable"))]
    assert problems == []


def test_no_public_execute_and_roles_get_only_their_share(conn: Conn, dsn: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    for role in ("worker", "client"):
        conn.execute(f"create role rt_{role}_{suffix} login in role ratchet_{role}")
    conn.execute(f"create role rt_nobody_{suffix} login")
    wid = start(conn, "wf")

    def as_role(role: str) -> Conn:
        return psycopg.connect(
            dsn, user=f"rt_{role}_{suffix}", autocommit=True, row_factory=dict_row
        )

    with as_role("client") as client, as_role("worker") as worker, as_role("nobody") as nobody:
        assert client.execute(
            "select ratchet.start_workflow('wf') is not null as ok"
        ).fetchone() == {"ok": True}
        assert client.execute("select count(*) > 0 as ok from ratchet.workflows").fetchone() == {
            "ok": True
        }
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.execute("select * from ratchet.claim(array['default'], 'w')")
        [c] = claim(worker, worker="w", n=1)
        worker.execute(
            "select ratchet.record_step(%s, %s, 0, 's', '1')", [c["workflow_id"], c["run_id"]]
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker.execute("select ratchet.cancel(%s)", [wid])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker.execute("update ratchet.workflows set status = 'succeeded'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.execute("delete from ratchet.steps")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nobody.execute("select ratchet.start_workflow('wf')")


def test_built_scripts_match_the_sources(tmp_path: Path) -> None:
    # The scripts are not committed: `make sql` and the package build hook
    # (setup.py) write them with `sh sql/build.sh all`. What the tests and the
    # package use must be what the sources make now.
    subprocess.run(["sh", str(ROOT / "sql" / "build.sh"), "all", str(tmp_path)], check=True)
    fresh = sorted(p.name for p in tmp_path.glob("*.sql"))
    assert f"ratchet--{VERSION}.sql" in fresh and "ratchet.sql" in fresh
    assert sorted(p.name for p in SQL_OUT.glob("*.sql")) == fresh, "stale _sql/: run `make sql`"
    for name in fresh:
        assert (tmp_path / name).read_text() == (SQL_OUT / name).read_text(), (
            f"{name} is stale: run `make sql`"
        )


def test_one_version_everywhere() -> None:
    import ratchet

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{VERSION}"\n' in pyproject, "pyproject.toml and ratchet.control disagree"
    assert ratchet.__version__ == VERSION
    assert (ROOT / "sql" / "released" / "ratchet--0.1.0.sql").exists()


@pytest.fixture
def fresh_db(pg_server: Any) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"x_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f'create database "{name}"')
        made.append(name)
        return str(pg_server.dsn(name))

    yield make
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        for name in made:
            c.execute(f'drop database if exists "{name}" with (force)')


def catalog_shape(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as c:
        functions = c.execute(
            "select p.oid::regprocedure::text || ' ' || md5(p.prosrc) || coalesce(p.proconfig::text, '')"
            "  from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'ratchet' order by 1"
        ).fetchall()
        columns = c.execute(
            "select table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable"
            "  from information_schema.columns where table_schema = 'ratchet' order by 1"
        ).fetchall()
        indexes = c.execute(
            "select indexdef from pg_indexes where schemaname = 'ratchet' order by 1"
        ).fetchall()
    return {
        "functions": [r[0] for r in functions],
        "columns": [r[0] for r in columns],
        "indexes": [r[0] for r in indexes],
    }


def test_plain_install_matches_create_extension(
    fresh_db: Callable[[], str], ratchet_install_mode: str
) -> None:
    if ratchet_install_mode != "extension":
        pytest.skip("the extension files are not installed in this server (run `make install`)")
    ext, plain = fresh_db(), fresh_db()
    with psycopg.connect(ext, autocommit=True) as c:
        c.execute("create extension ratchet")
        assert c.execute("select ratchet.version()").fetchone() == (VERSION,)
    with psycopg.connect(plain, autocommit=True) as c:
        c.execute((SQL_OUT / "ratchet.sql").read_text())
        assert c.execute("select ratchet.version()").fetchone() == (VERSION,)
    assert catalog_shape(ext) == catalog_shape(plain)


def test_pg_dump_keeps_workflow_data(
    fresh_db: Callable[[], str], pg_server: Any, ratchet_install_mode: str
) -> None:
    if ratchet_install_mode != "extension":
        pytest.skip("the extension files are not installed in this server (run `make install`)")
    db = fresh_db()
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("create extension ratchet")
        c.execute("select ratchet.create_queue('mine')")
        c.execute(
            "select ratchet.start_workflow('dumped', workflow_id => 'keep-me', queue => 'mine')"
        )
    dump = subprocess.run(
        [str(pg_server.bindir / "pg_dump"), "--data-only", "-d", db],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "keep-me" in dump
    assert "mine" in dump


def explain_claim(conn: Conn) -> str:
    """Run claim() with auto_explain sending nested plans to this session as NOTICEs."""
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    conn.execute("load 'auto_explain'")
    conn.execute("set auto_explain.log_min_duration = 0")
    conn.execute("set auto_explain.log_nested_statements = on")
    conn.execute("set auto_explain.log_level = notice")
    conn.execute("set enable_seqscan = on")
    claim(conn, n=10)
    conn.execute("set auto_explain.log_min_duration = -1")
    return "\n".join(plans)


@pytest.mark.parametrize("bulk", ["succeeded", "enqueued"])
def test_claim_plans_use_indexes_not_seq_scans(conn: Conn, bulk: str) -> None:
    # 20k workflows, statistics up to date: ended ones (history) or waiting
    # ones (a deep queue; generic plans once did a seq scan here), plus a few
    # started normally.
    conn.execute(
        "insert into ratchet.workflows (workflow_id, name, queue, status, start_at, created_at,"
        " updated_at, ended_at, attempts)"
        " select 'old-' || i, 'wf', 'default', %s, now(), now(), now(),"
        "        case when %s = 'succeeded' then now() end, 1"
        "   from generate_series(1, 20000) i", (bulk, bulk)
    )
    for _ in range(20):
        start(conn, "wf")
    conn.execute("analyze ratchet.workflows")
    plans = explain_claim(conn)
    assert "workflows" in plans, "auto_explain did not report claim's statements"
    assert "Seq Scan on workflows" not in plans, plans

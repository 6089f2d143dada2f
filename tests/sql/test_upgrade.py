"""Upgrades: 0.1.0 (as released, sql/released/) to this version, both kinds of install.

(a) Workflows in flight across the upgrade (enqueued, running, lease about to
    expire, sleeping, waiting for a message) finish after it through the SQL
    API, and no step recorded before the upgrade is re-recorded or changed.
(b) The catalog of an upgraded database equals a fresh install's: this is what
    keeps every change under sql/ honest about its upgrade preamble.
(c) DROP EXTENSION (or DROP SCHEMA for plain installs) leaves nothing behind.
(d) Bad input: upgrading twice, from an unknown or newer version, into a
    foreign ``ratchet`` schema; a database owner who may not create roles.

Extension mode runs on a private server whose share directory is a private
copy of the real one with ``make install DESTDIR=...`` applied, so the test
needs neither root nor write access to the shared extension directory, and
it checks what `make install` installs.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from sqlhelp import claim, raises_sqlstate, set_now

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python_client"))

import ratchet  # noqa: E402
from ratchet._install import InstallError, install  # noqa: E402
from ratchet.testing import EmbeddedPostgres, find_bindir  # noqa: E402

Conn = psycopg.Connection[Any]
SQL_OUT = ROOT / "python_client" / "ratchet" / "_sql"
RELEASED = ROOT / "sql" / "released"
OLD = "0.1.0"
NEW = ratchet.__version__
T0 = "2030-01-01 00:00:00+00"


# ---------------------------------------------------------------- servers


def _pg_config(bindir: Path) -> str | None:
    for cand in (bindir / "pg_config", shutil.which("pg_config")):
        if cand is None:
            continue
        try:
            out = subprocess.run([str(cand), "--bindir"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            continue
        if Path(out).resolve() == bindir.resolve():
            return str(cand)
    return None


def _private_tree(bindir: Path) -> tuple[Path, Path] | str:
    """A private copy of the PostgreSQL tree with `make install` applied.

    Returns (tree, private bindir), or the reason it cannot be made.
    PostgreSQL finds its share directory relative to its own executable, so
    hard links of the server binaries under ``tree`` + bindir see
    ``tree`` + sharedir, whose extension directory is ours.
    """
    pg_config = _pg_config(bindir)
    if pg_config is None or shutil.which("make") is None:
        return f"no pg_config for {bindir} (or no make): cannot run `make install`"

    def conf(flag: str) -> Path:
        return Path(subprocess.run([pg_config, flag], capture_output=True, text=True,
                                   check=True).stdout.strip())

    sharedir, pkglibdir = conf("--sharedir"), conf("--pkglibdir")
    tree = Path(tempfile.mkdtemp(prefix="ratchet-pgtree-", dir="/tmp"))
    tree.chmod(0o755)  # the server may run as another OS user

    def mirror(path: Path) -> Path:
        return tree / path.relative_to(path.anchor)

    mine = mirror(bindir)
    mine.mkdir(parents=True)
    for exe in bindir.iterdir():  # hard links: a symlink would lead back to the real tree
        if exe.is_file():
            try:
                os.link(exe, mine / exe.name)
            except OSError:
                shutil.copy2(exe, mine / exe.name)
    mirror(pkglibdir).parent.mkdir(parents=True, exist_ok=True)
    if not mirror(pkglibdir).exists():
        mirror(pkglibdir).symlink_to(pkglibdir)
    extdir = mirror(sharedir) / "extension"
    extdir.mkdir(parents=True)
    for entry in sharedir.iterdir():
        if entry.name != "extension":
            (mirror(sharedir) / entry.name).symlink_to(entry)
    proc = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "install", f"PG_CONFIG={pg_config}", f"DESTDIR={tree}"],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(tree, ignore_errors=True)
        return f"`make install DESTDIR=...` failed: {proc.stderr.strip()[-500:]}"
    for entry in (sharedir / "extension").iterdir():
        if not (extdir / entry.name).exists():
            (extdir / entry.name).symlink_to(entry)
    return tree, mine


@pytest.fixture(scope="module")
def ext_server(pg_server: EmbeddedPostgres) -> Iterator[EmbeddedPostgres | str]:
    """A private server with this checkout's extension files, or why there is none."""
    made = _private_tree(find_bindir(pg_server.bindir))
    if isinstance(made, str):
        yield made
        return
    tree, bindir = made
    try:
        with EmbeddedPostgres(bindir=bindir) as pg:
            yield pg
    finally:
        shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture(params=["plain", "extension"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_db(
    pg_server: EmbeddedPostgres, ext_server: EmbeddedPostgres | str, mode: str
) -> Iterator[Callable[[], str]]:
    """new_db() -> DSN of an empty database on the server for this mode."""
    if mode == "extension":
        if isinstance(ext_server, str):
            pytest.skip(f"extension-mode upgrade test: {ext_server}")
        server = ext_server
    else:
        server = pg_server
    made: list[str] = []

    def make() -> str:
        name = f"u_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            c.execute(f'create database "{name}"')
        made.append(name)
        return server.dsn(name)

    yield make
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        for name in made:
            c.execute(f'drop database if exists "{name}" with (force)')


def connect(dsn: str) -> Conn:
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


def install_old(dsn: str, mode: str) -> None:
    """Install 0.1.0 exactly as released."""
    with psycopg.connect(dsn, autocommit=True) as c:
        if mode == "extension":
            c.execute(f"create extension ratchet version '{OLD}'")
        else:
            c.execute((RELEASED / f"ratchet-plain--{OLD}.sql").read_text())
        assert c.execute("select ratchet.version()").fetchone() == (OLD,)


def install_new(dsn: str, mode: str) -> None:
    """A fresh install of this version."""
    with psycopg.connect(dsn, autocommit=True) as c:
        if mode == "extension":
            c.execute("create extension ratchet")
        else:
            c.execute((SQL_OUT / "ratchet.sql").read_text())
        assert c.execute("select ratchet.version()").fetchone() == (NEW,)


def upgrade_script(dsn: str, mode: str) -> None:
    """The upgrade as a DBA runs it by hand."""
    with psycopg.connect(dsn, autocommit=True) as c:
        if mode == "extension":
            c.execute(f"alter extension ratchet update to '{NEW}'")
        else:
            c.execute((SQL_OUT / f"ratchet-plain--{OLD}--{NEW}.sql").read_text())
        assert c.execute("select ratchet.version()").fetchone() == (NEW,)


# ---------------------------------------------------------------- released

# What 0.1.0 users have: these files never change (a new release adds files).
RELEASED_SHA256 = {
    "ratchet--0.1.0.sql": "527f3171598831a7f390cecfbd279db76340bd8bf0aa5c4f03bd1fe1f8ba4d7d",
    "ratchet-plain--0.1.0.sql": "f71e428fcf4b5a932495f9e7d6ad5e5a4330a7ed7cbe8e5c5e655cc40136b2b4",
}


def test_released_scripts_are_as_released() -> None:
    for name, digest in RELEASED_SHA256.items():
        assert hashlib.sha256((RELEASED / name).read_bytes()).hexdigest() == digest, (
            f"sql/released/{name} changed: released scripts are what users have installed")


# ---------------------------------------------------------------- (a) in flight

# Each workflow name is a little program: record steps, sleep, wait for a message.
PROGRAMS: dict[str, list[str]] = {
    "plain": ["a", "b", "c"],
    "sleeper": ["a", "sleep", "c"],
    "waiter": ["a", "recv", "c"],
}


def drive(c: Conn, row: dict[str, Any], stop_after: int | None = None, done: int = 0) -> str:
    """Run a claimed workflow like a worker would; returns what it did.

    Steps already recorded (``row["steps"]``) are replayed, not re-run.
    ``stop_after`` leaves it running after that many steps (a worker
    interrupted mid-run); ``done`` continues such a run after the steps it ran. These calls use only what 0.1.0 and this version
    share; a signature change in sql/ shows up here first.
    """
    wid, run = row["workflow_id"], row["run_id"]
    recorded = {s["step_id"] for s in row["steps"] or []} | set(range(done))
    for i, step in enumerate(PROGRAMS[row["name"]]):
        if stop_after is not None and i >= stop_after:
            return "interrupted"
        if i in recorded:
            continue
        if step == "sleep":
            r = c.execute("select * from ratchet.durable_sleep(%s, %s, %s, 60)",
                          [wid, run, i]).fetchone()
            assert r is not None
            if r["remaining_seconds"] > 0:
                c.execute("select ratchet.suspend(%s, %s, %s)", [wid, run, r["wake_at"]])
                return "sleeping"
        elif step == "recv":
            msg = c.execute("select ratchet.recv(%s, %s, %s, 't') as m", [wid, run, i]).fetchone()
            assert msg is not None
            if msg["m"] is None:
                c.execute("select ratchet.suspend(%s, %s, ratchet.now() + interval '1 day',"
                          " 'message', 't')", [wid, run])
                return "waiting"
        else:
            c.execute("select ratchet.record_step(%s, %s, %s, %s, %s)",
                      [wid, run, i, step, f'{{"step": {i}, "run": {run}}}'])
    c.execute("select ratchet.finish(%s, %s, '{\"done\": true}')", [wid, run])
    return "finished"


def claim_one(c: Conn, wid: str) -> dict[str, Any]:
    row = c.execute("select * from ratchet.claim_workflow(%s, 'old-worker', '30 seconds')",
                    [wid]).fetchone()
    assert row is not None, f"{wid} was not claimable"
    return row


def fill(c: Conn) -> dict[str, Any]:
    """Workflows in every live state, through the 0.1.0 API; returns handles."""
    set_now(c, T0)
    start = "select ratchet.start_workflow(%s, workflow_id => %s) as id"
    for wid, name in (("done", "plain"), ("enqueued", "plain"), ("running", "plain"),
                      ("lost", "plain"), ("sleeping", "sleeper"), ("waiting", "waiter")):
        c.execute(start, [name, wid])
    assert drive(c, claim_one(c, "done")) == "finished"
    running = claim_one(c, "running")
    assert drive(c, running, stop_after=2) == "interrupted"
    assert drive(c, claim_one(c, "lost"), stop_after=1) == "interrupted"
    assert drive(c, claim_one(c, "sleeping")) == "sleeping"
    assert drive(c, claim_one(c, "waiting")) == "waiting"
    return {"running": running}


def steps_of(c: Conn) -> list[dict[str, Any]]:
    return c.execute("select * from ratchet.steps order by workflow_id, step_id").fetchall()


def test_workflows_in_flight_finish_after_the_upgrade(new_db: Callable[[], str], mode: str
                                                      ) -> None:
    dsn = new_db()
    install_old(dsn, mode)
    with connect(dsn) as c:
        handles = fill(c)
        before = steps_of(c)
        states = {r["workflow_id"]: r["status"] for r in c.execute(
            "select workflow_id, status::text as status from ratchet.workflows").fetchall()}
    assert states == {"done": "succeeded", "enqueued": "enqueued", "running": "running",
                      "lost": "running", "sleeping": "enqueued", "waiting": "enqueued"}

    message = install(dsn)  # what `ratchet install` does
    assert f"upgraded ratchet {OLD} -> {NEW}" in message, message

    with connect(dsn) as c:
        # 0.2.0 honours the fake clock only where the owner enabled it
        c.execute("update ratchet.settings set fake_clock_enabled = true")
        # the worker that was running during the upgrade carries on with its run
        set_now(c, "2030-01-01 00:00:05+00")
        assert drive(c, handles["running"], done=2) == "finished"
        # later: the sleep is over, the lost run's lease has expired, a message arrives
        set_now(c, "2030-01-01 00:05:00+00")
        c.execute("select ratchet.send('waiting', '{\"hello\": 1}', 't')")
        outcomes: dict[str, str] = {}
        for _ in range(10):
            rows = claim(c, worker="new-worker", n=10)
            if not rows:
                break
            for row in rows:
                outcomes[row["workflow_id"]] = drive(c, row)
        assert outcomes == {w: "finished" for w in ("enqueued", "lost", "sleeping", "waiting")}
        ended = {r["workflow_id"]: r["status"] for r in c.execute(
            "select workflow_id, status::text as status from ratchet.workflows").fetchall()}
        assert ended == {w: "succeeded" for w in
                         ("done", "enqueued", "running", "lost", "sleeping", "waiting")}
        after = {(s["workflow_id"], s["step_id"]): s for s in steps_of(c)}
        for s in before:  # recorded once, never re-recorded or changed
            assert after[(s["workflow_id"], s["step_id"])] == s
        for wid in ended:
            assert sorted(k[1] for k in after if k[0] == wid) == [0, 1, 2], wid
        assert after[("waiting", 1)]["output"] == {"hello": 1}


# ---------------------------------------------------------------- (b) catalog

CATALOG: dict[str, str] = {
    "schema": """
        select nspname || ' acl=' || coalesce(nspacl::text, '-')
               || ' comment=' || coalesce(obj_description(oid, 'pg_namespace'), '-')
          from pg_namespace where nspname = 'ratchet'""",
    "functions": """
        select p.oid::regprocedure::text
               || ' -> ' || pg_get_function_result(p.oid)
               || ' args=' || pg_get_function_arguments(p.oid)
               || ' kind=' || p.prokind::text || ' vol=' || p.provolatile::text::text
               || ' secdef=' || p.prosecdef || ' strict=' || p.proisstrict
               || ' par=' || p.proparallel::text || ' lang=' || l.lanname
               || ' cost=' || p.procost || ' rows=' || p.prorows
               || ' config=' || coalesce(p.proconfig::text, '-')
               || ' acl=' || coalesce(p.proacl::text, '-')
               || ' src=' || md5(p.prosrc)
               || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          join pg_language l on l.oid = p.prolang
         where n.nspname = 'ratchet'""",
    "relations": """
        select c.relname || ' kind=' || c.relkind::text || ' persistence=' || c.relpersistence::text
               || ' rls=' || c.relrowsecurity || ' options=' || coalesce(c.reloptions::text, '-')
               || ' acl=' || coalesce(c.relacl::text, '-')
               || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
               || case when c.relkind in ('v', 'm') then ' def=' || pg_get_viewdef(c.oid)
                       else '' end
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'ratchet'""",
    # column order counts: an upgrade can only add columns at the end, so a
    # new column goes last in its table in sql/10_tables.sql too
    "columns": """
        select c.relname || '.' || lpad(row_number() over (partition by c.oid order by a.attnum)::text, 3, '0')
               || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || ' notnull=' || a.attnotnull
               || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
               || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
               || ' collation=' || coalesce(nullif(a.attcollation, 0)::regcollation::text, '-')
               || ' acl=' || coalesce(a.attacl::text, '-')
               || ' comment=' || coalesce(col_description(c.oid, a.attnum), '-')
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where n.nspname = 'ratchet' and a.attnum > 0 and not a.attisdropped""",
    "constraints": """
        select conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(c.oid)
               || ' deferrable=' || condeferrable || ' validated=' || convalidated
               || ' comment=' || coalesce(obj_description(c.oid, 'pg_constraint'), '-')
          from pg_constraint c join pg_namespace n on n.oid = c.connamespace
         where n.nspname = 'ratchet'""",
    "indexes": """
        select indexdef from pg_indexes where schemaname = 'ratchet'""",
    "sequences": """
        select s.seqrelid::regclass::text || ' ' || format_type(s.seqtypid, null)
               || ' start=' || s.seqstart || ' inc=' || s.seqincrement || ' min=' || s.seqmin
               || ' max=' || s.seqmax || ' cache=' || s.seqcache || ' cycle=' || s.seqcycle
          from pg_sequence s join pg_class c on c.oid = s.seqrelid
          join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'ratchet'""",
    "types": """
        select t.typname || ' type=' || t.typtype::text
               || ' labels=' || coalesce((select string_agg(e.enumlabel, ',' order by e.enumsortorder)
                                            from pg_enum e where e.enumtypid = t.oid), '-')
               || ' comment=' || coalesce(obj_description(t.oid, 'pg_type'), '-')
          from pg_type t join pg_namespace n on n.oid = t.typnamespace
         where n.nspname = 'ratchet' and t.typtype in ('c', 'e', 'd', 'r')
           and (t.typrelid = 0 or (select relkind from pg_class where oid = t.typrelid) = 'c')""",
    "triggers": """
        select pg_get_triggerdef(t.oid) from pg_trigger t
          join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'ratchet' and not t.tgisinternal""",
    "policies": """
        select p.polname || ' on ' || p.polrelid::regclass::text || ' '
               || coalesce(pg_get_expr(p.polqual, p.polrelid), '-')
          from pg_policy p join pg_class c on c.oid = p.polrelid
          join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'ratchet'""",
    "extension": """
        select 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
          from pg_depend d join pg_extension e on e.oid = d.refobjid
         where d.refclassid = 'pg_extension'::regclass and d.deptype = 'e'
           and e.extname = 'ratchet'
        union all
        select 'config ' || coalesce(c::regclass::text, '?') || ' ' || coalesce(w, '-')
          from pg_extension e,
               unnest(e.extconfig, e.extcondition) as u(c, w)
         where e.extname = 'ratchet'
        union all
        select 'extension version=' || extversion || ' relocatable=' || extrelocatable
               || ' schema=' || extnamespace::regnamespace::text
          from pg_extension where extname = 'ratchet'""",
    "seed rows": """
        select 'queue ' || name || ' ' || coalesce(concurrency::text, '-') || ' '
               || coalesce(worker_concurrency::text, '-') || ' ' || paused
          from ratchet.queues""",
}


def catalog(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as c:
        return {name: sorted(str(r[0]) for r in c.execute(query).fetchall())
                for name, query in CATALOG.items()}


def catalog_diff(upgraded: dict[str, list[str]], fresh: dict[str, list[str]]) -> str:
    out: list[str] = []
    for name in CATALOG:
        if upgraded[name] != fresh[name]:
            out.extend(difflib.unified_diff(fresh[name], upgraded[name], f"fresh {NEW}: {name}",
                                            f"upgraded {OLD} -> {NEW}: {name}", lineterm="", n=0))
    return "\n".join(out)


# What an upgraded 0.1.0 extension keeps, and PostgreSQL cannot change: 0.1.0's
# control file let CREATE EXTENSION make schema ratchet (so it is not a member,
# and a schema holding its extension cannot be added to it) and recorded the
# extension in it. From 0.2.0 the script creates the schema. docs/upgrading.md
# tells these databases to DROP SCHEMA ratchet after DROP EXTENSION.
FROM_0_1_0 = {
    "extension": {
        ("-", f"extension version={NEW} relocatable=false schema=pg_catalog"),
        ("+", f"extension version={NEW} relocatable=false schema=ratchet"),
        ("-", "member schema ratchet"),
    }
}


def test_upgraded_catalog_equals_a_fresh_install(new_db: Callable[[], str], mode: str) -> None:
    upgraded, fresh = new_db(), new_db()
    install_old(upgraded, mode)
    upgrade_script(upgraded, mode)
    install_new(fresh, mode)
    up, new = catalog(upgraded), catalog(fresh)
    for section, lines in FROM_0_1_0.items():
        for sign, line in lines:
            if mode == "extension":
                assert line in (new if sign == "-" else up)[section], line
            for side in (up, new):
                if line in side[section]:
                    side[section].remove(line)
    diff = catalog_diff(up, new)
    assert not diff, (
        "an upgraded database differs from a fresh install ('-' fresh, '+' upgraded). Put the "
        f"table/column/index changes and drops of changed functions into "
        f"sql/upgrades/ratchet--{OLD}--{NEW}.sql (see its header; new columns go last):\n"
        + diff)


# ---------------------------------------------------------------- (c) uninstall


LEFTOVERS = """
    select 'schema ' || nspname from pg_namespace where nspname = 'ratchet'
    union all
    select 'function ' || p.oid::regprocedure::text from pg_proc p
     where p.proname like '%ratchet%' or pg_get_function_arguments(p.oid) like '%ratchet.%'
    union all
    select 'type ' || t.typname from pg_type t where t.typname like '%ratchet%'
    union all
    select 'extension ' || extname from pg_extension where extname = 'ratchet'
    union all
    select 'event trigger ' || evtname from pg_event_trigger where evtname like '%ratchet%'
"""


@pytest.mark.parametrize("history", ["fresh", "upgraded"])
def test_uninstall_leaves_nothing_behind(new_db: Callable[[], str], mode: str, history: str
                                         ) -> None:
    dsn = new_db()
    if history == "fresh":
        install_new(dsn, mode)
    else:
        install_old(dsn, mode)
        upgrade_script(dsn, mode)
    with connect(dsn) as c:
        c.execute("select ratchet.start_workflow('wf')")
        if mode == "extension":
            c.execute("drop extension ratchet")  # no CASCADE needed: nothing depends on it
            if history == "upgraded":
                # first installed at 0.1.0: the schema is not the extension's (FROM_0_1_0)
                assert c.execute(LEFTOVERS).fetchall() == [{"?column?": "schema ratchet"}]
                c.execute("drop schema ratchet")  # empty: no CASCADE
        else:
            c.execute("drop schema ratchet cascade")
        assert c.execute(LEFTOVERS).fetchall() == []
        # the roles are cluster-wide and stay (docs/upgrading.md says how to drop them)
        roles = c.execute("select rolname from pg_roles where rolname like 'ratchet_%'"
                          " order by 1").fetchall()
        assert [r["rolname"] for r in roles] == ["ratchet_client", "ratchet_worker"]
    install_new(dsn, mode)  # and it installs again


# ---------------------------------------------------------------- (d) bad input


def test_upgrading_twice_or_from_an_unknown_version_is_rt008(new_db: Callable[[], str],
                                                             mode: str) -> None:
    dsn = new_db()
    install_old(dsn, mode)
    upgrade_script(dsn, mode)
    script = (SQL_OUT / f"ratchet-plain--{OLD}--{NEW}.sql").read_text()
    with connect(dsn) as c:
        if mode == "plain":
            with raises_sqlstate("RT008") as info:
                c.execute(script)
            assert f"already at version {NEW}" in str(info.value)
            c.execute("rollback")
        else:
            # the plain script refuses an extension install, whatever its version
            with raises_sqlstate("RT008") as info:
                c.execute(script)
            assert "ALTER EXTENSION" in (info.value.diag.message_hint or "")
            c.execute("rollback")
        assert "already at" in install(dsn)
        # an install at a version this package does not know: nothing changes
        c.execute("create or replace function ratchet.version() returns text language sql"
                  " immutable set search_path = pg_catalog, pg_temp as $$ select '9.9.9'::text $$")
        if mode == "extension":
            c.execute("update pg_extension set extversion = '9.9.9' where extname = 'ratchet'")
        with pytest.raises(InstallError, match="newer than this package") as err:
            install(dsn)
        assert "pip install -U" in err.value.hint
        c.execute("create or replace function ratchet.version() returns text language sql"
                  " immutable set search_path = pg_catalog, pg_temp as $$ select '0.0.7'::text $$")
        if mode == "extension":
            c.execute("update pg_extension set extversion = '0.0.7' where extname = 'ratchet'")
        with pytest.raises(InstallError, match="no upgrade path"):
            install(dsn)
        if mode == "plain":
            with raises_sqlstate("RT008") as info:
                c.execute(script)
            assert "ratchet 0.0.7 is installed" in str(info.value)
            c.execute("rollback")
        assert c.execute("select ratchet.version() as v").fetchone() == {"v": "0.0.7"}


@pytest.mark.parametrize("mode", ["plain"])  # ALTER EXTENSION is one transaction anyway
def test_a_failing_upgrade_changes_nothing(new_db: Callable[[], str], mode: str) -> None:
    dsn = new_db()
    install_old(dsn, mode)
    script = (SQL_OUT / f"ratchet-plain--{OLD}--{NEW}.sql").read_text()
    # break the script at its very end: everything before it must roll back
    broken = script.rsplit("COMMIT;", 1)[0] + "select 1/0;\nCOMMIT;\n"
    with connect(dsn) as c:
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute(broken)
        c.execute("rollback")
        assert c.execute("select ratchet.version() as v").fetchone() == {"v": OLD}
    assert f"upgraded ratchet {OLD} -> {NEW}" in install(dsn)


def test_a_foreign_ratchet_schema_is_refused(new_db: Callable[[], str], mode: str) -> None:
    dsn = new_db()
    with connect(dsn) as c:
        c.execute("create schema ratchet")
        c.execute("create table ratchet.mine (x int)")
    with pytest.raises(InstallError, match="Ratchet did not create") as err:
        install(dsn, plain=mode == "plain")
    assert "RENAME" in err.value.hint
    with connect(dsn) as c:
        with raises_sqlstate("RT008") as info:
            c.execute((SQL_OUT / "ratchet.sql").read_text())
        assert "not created by Ratchet" in (info.value.diag.message_hint or "")
        c.execute("rollback")
        tables = c.execute("select relname from pg_class c join pg_namespace n"
                           " on n.oid = c.relnamespace where nspname = 'ratchet'").fetchall()
        assert tables == [{"relname": "mine"}]


# ---------------------------------------------------------------- roles


def test_an_owner_without_createrole_installs_and_upgrades_plain(
    pg_server: EmbeddedPostgres,
) -> None:
    """Managed Postgres: the database owner is neither superuser nor CREATEROLE.

    Here the roles exist already (an administrator made them, or another
    database's install did): the owner's install grants to them.
    """
    suffix = uuid.uuid4().hex[:8]
    owner, db = f"rt_owner_{suffix}", f"rt_owned_{suffix}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        for role in ("ratchet_worker", "ratchet_client"):  # the administrator's part
            if c.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone() is None:
                c.execute(f"create role {role} nologin")
        c.execute(f"create role {owner} login nosuperuser nocreaterole")
        c.execute(f"create database {db} owner {owner}")
    dsn = make_conninfo(pg_server.dsn(db), user=owner)
    try:
        message = install(dsn, plain=True)
        assert message == f"installed ratchet {NEW} (plain SQL)", message
        with connect(dsn) as c:
            acl = c.execute("select proacl::text as acl from pg_proc where oid ="
                            " 'ratchet.claim(text[], text, int, interval, text[], text)'::regprocedure"
                            ).fetchone()
            assert acl is not None and "ratchet_worker=X" in acl["acl"]
            c.execute("drop schema ratchet cascade")
            # 0.1.0 as released, installed by this owner, then upgraded by it
            c.execute((RELEASED / f"ratchet-plain--{OLD}.sql").read_text())
        assert f"upgraded ratchet {OLD} -> {NEW}" in install(dsn)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop database if exists {db} with (force)")
            c.execute(f"drop owned by {owner}")
            c.execute(f"drop role if exists {owner}")


def test_missing_roles_give_a_notice_and_no_grants(
    pg_server_factory: Callable[..., EmbeddedPostgres],
) -> None:
    """On a server without the roles, an owner who may not create them gets told how."""
    pg = pg_server_factory(install=False)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("create role owner1 login nosuperuser nocreaterole")
        c.execute("create database owned owner owner1")
    dsn = make_conninfo(pg.dsn("owned"), user="owner1")
    message = install(dsn, plain=True)
    assert f"installed ratchet {NEW} (plain SQL)" in message
    assert "ratchet_worker, ratchet_client not created" in message, message
    assert "CREATE ROLE ratchet_worker NOLOGIN" in message
    assert "SELECT ratchet._grant_roles()" in message
    with connect(dsn) as c:
        acl = c.execute("select proacl::text as acl from pg_proc where oid ="
                        " 'ratchet.claim(text[], text, int, interval, text[], text)'::regprocedure"
                        ).fetchone()
        assert acl is not None and "ratchet_worker" not in (acl["acl"] or "")
        # the owner runs the whole protocol itself
        c.execute("select ratchet.start_workflow('wf', workflow_id => 'w1')")
        [row] = claim(c, n=1)
        c.execute("select ratchet.finish(%s, %s)", [row["workflow_id"], row["run_id"]])
    # an administrator creates the roles later; the owner applies the grants
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("create role ratchet_worker nologin")
        c.execute("create role ratchet_client nologin")
        c.execute("create role w_login login in role ratchet_worker")
    with connect(dsn) as c:
        assert c.execute("select ratchet._grant_roles() as g").fetchone() == {
            "g": "granted to ratchet_worker and ratchet_client"}
        c.execute("select ratchet.start_workflow('wf', workflow_id => 'w2')")
    with connect(make_conninfo(pg.dsn("owned"), user="w_login")) as w:
        [row] = claim(w, n=1)
        assert row["workflow_id"] == "w2"


def test_a_database_owner_creates_and_upgrades_the_trusted_extension(
    ext_server: EmbeddedPostgres | str,
) -> None:
    """ratchet is a trusted extension: a database owner needs no superuser."""
    if isinstance(ext_server, str):
        pytest.skip(ext_server)
    suffix = uuid.uuid4().hex[:8]
    owner, db = f"rt_owner_{suffix}", f"rt_owned_{suffix}"
    with psycopg.connect(ext_server.dsn(), autocommit=True) as c:
        c.execute(f"create role {owner} login nosuperuser nocreaterole")
        c.execute(f"create database {db} owner {owner}")
    dsn = make_conninfo(ext_server.dsn(db), user=owner)
    try:
        with connect(dsn) as c:
            c.execute(f"create extension ratchet version '{OLD}'")
            c.execute("select ratchet.start_workflow('wf', workflow_id => 'kept')")
        assert f"upgraded ratchet {OLD} -> {NEW}" in install(dsn)
        with connect(dsn) as c:
            assert c.execute("select status::text as s from ratchet.workflows").fetchall() == [
                {"s": "enqueued"}]
            c.execute("drop extension ratchet")
            c.execute("drop schema ratchet")  # first installed at 0.1.0 (FROM_0_1_0)
            c.execute("create extension ratchet")
            c.execute("drop extension ratchet")
            assert c.execute(LEFTOVERS).fetchall() == []
    finally:
        with psycopg.connect(ext_server.dsn(), autocommit=True) as c:
            c.execute(f"drop database if exists {db} with (force)")
            c.execute(f"drop role if exists {owner}")


def ratchet_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python_client")}
    return subprocess.run([sys.executable, "-m", "ratchet", "--dsn", dsn, *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_install_command_upgrades_and_refuses(new_db: Callable[[], str], mode: str) -> None:
    dsn = new_db()
    install_old(dsn, mode)
    first, again = ratchet_cli(dsn, "install"), ratchet_cli(dsn, "install")
    assert first.returncode == 0 and f"upgraded ratchet {OLD} -> {NEW}" in first.stdout, first
    assert again.returncode == 0 and f"already at {NEW}, nothing to do" in again.stdout, again
    foreign = new_db()
    with connect(foreign) as c:
        c.execute("create schema ratchet")
    refused = ratchet_cli(foreign, "install")
    assert refused.returncode == 1, refused
    assert "Ratchet did not create" in refused.stderr and "hint: rename it" in refused.stderr

"""The test infrastructure itself: the embedded server and the per-test databases."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import ratchet.testing._embedded as embedded
from ratchet.testing import EmbeddedPostgres, EmbeddedPostgresError

Connection = psycopg.Connection[Any]


def _proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith("Z")


# ---------------------------------------------------------------- the session server


def test_server_settings(pg_server: EmbeddedPostgres) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        settings = dict(
            c.execute(
                "select name, setting from pg_settings where name = any(%s)",
                [["fsync", "full_page_writes", "max_connections", "listen_addresses", "port"]],
            ).fetchall()
        )
        assert c.execute("select current_user").fetchone() == ("postgres",)
    assert settings == {
        "fsync": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "listen_addresses": "127.0.0.1",
        "port": str(pg_server.port),
    }
    assert pg_server.logfile.parent == pg_server.datadir


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_server_never_runs_as_root(pg_server: EmbeddedPostgres) -> None:
    pid = pg_server.postmaster_pid
    assert pid is not None
    uid = _proc_uid(pid)
    assert uid != 0
    if os.geteuid() != 0:
        assert uid == os.geteuid()  # a normal user runs the server itself
    assert pg_server.datadir.stat().st_uid == uid


def test_unix_socket(pg_server: EmbeddedPostgres) -> None:
    with psycopg.connect(pg_server.unix_dsn()) as c:
        assert c.execute("select inet_server_addr()").fetchone() == (None,)  # not TCP
    assert (pg_server.socket_dir / f".s.PGSQL.{pg_server.port}").exists()


# ---------------------------------------------------------------- private servers


def test_restart_immediate_is_a_crash(pg_server_factory: Callable[..., EmbeddedPostgres]) -> None:
    pg = pg_server_factory(install=False)
    port = pg.port
    before = psycopg.connect(pg.dsn(), autocommit=True)
    before.execute("create table t (x int)")
    before.execute("insert into t values (1)")
    pending = psycopg.connect(pg.dsn())
    pending.execute("insert into t values (2)")  # never committed
    old_pid = pg.postmaster_pid

    pg.restart(mode="immediate")

    assert pg.port == port and pg.running
    assert pg.postmaster_pid != old_pid
    with pytest.raises(psycopg.OperationalError):
        before.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        pending.commit()
    with psycopg.connect(pg.dsn()) as after:
        assert after.execute("select x from t").fetchall() == [(1,)]
    before.close()
    pending.close()


def test_kill9_then_start(pg_server_factory: Callable[..., EmbeddedPostgres]) -> None:
    pg = pg_server_factory(install=False)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("create table t as select 42 as x")
    victim = psycopg.connect(pg.dsn())
    pid = pg.postmaster_pid
    assert pid is not None

    pg.kill9_postmaster()

    assert not pg.running and _gone(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(), connect_timeout=2)
    pg.start()
    with psycopg.connect(pg.dsn()) as c:
        assert c.execute("select x from t").fetchall() == [(42,)]
    with pytest.raises(psycopg.OperationalError):
        victim.execute("select 1")
    victim.close()


def test_stop_and_start_keep_the_port_and_data(
    pg_server_factory: Callable[..., EmbeddedPostgres],
) -> None:
    pg = pg_server_factory(install=False, fast=False)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        assert c.execute("show fsync").fetchone() == ("on",)
        c.execute("create table t as select 1 as x")
    dsn = pg.dsn()
    pg.stop()
    assert not pg.running and pg.postmaster_pid is None
    pg.start()
    assert pg.dsn() == dsn
    pg.restart(mode="fast")
    with psycopg.connect(dsn) as c:
        assert c.execute("select x from t").fetchall() == [(1,)]


def test_first_start_moves_off_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real())
        with EmbeddedPostgres(extra_conf={"application_name": "moved"}) as pg:
            assert pg.port != taken
            with psycopg.connect(pg.dsn()) as c:
                assert c.execute("show application_name").fetchone() == ("moved",)


def test_fixed_port_that_is_taken_fails_clearly() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(EmbeddedPostgresError, match="could not start server"):
            EmbeddedPostgres(port=port)


def test_cleanup_removes_everything_and_is_idempotent() -> None:
    pg = EmbeddedPostgres()
    base = pg.datadir.parent
    pid = pg.postmaster_pid
    assert pid is not None and base.is_dir()
    pg.cleanup()
    assert not base.exists()
    assert _gone(pid)
    pg.cleanup()
    with pytest.raises(EmbeddedPostgresError):
        pg.start()


# ---------------------------------------------------------------- per-test databases

_seen_databases: list[str] = []


def _check_isolated(conn: Connection, pg_server: EmbeddedPostgres) -> None:
    """Both isolation tests run this: whichever runs second sees a fresh clone."""
    name = conn.execute("select current_database() as db").fetchone()["db"]  # type: ignore[index]
    assert name.startswith("t_")
    exists = conn.execute("select to_regclass('public.isolation_probe') is not null as e")
    assert exists.fetchone() == {"e": False}
    conn.execute("create table public.isolation_probe (x int)")
    with psycopg.connect(pg_server.dsn()) as admin:
        for earlier in _seen_databases:  # dropped after its test
            gone = admin.execute("select 1 from pg_database where datname = %s", [earlier])
            assert gone.fetchone() is None
    _seen_databases.append(name)


def test_per_test_database_is_isolated_a(conn: Connection, pg_server: EmbeddedPostgres) -> None:
    _check_isolated(conn, pg_server)


def test_per_test_database_is_isolated_b(conn: Connection, pg_server: EmbeddedPostgres) -> None:
    _check_isolated(conn, pg_server)


def test_template_has_ratchet_and_nothing_else(conn: Connection, ratchet_install_mode: str) -> None:
    schema = conn.execute("select 1 as ok from pg_namespace where nspname = 'ratchet'").fetchone()
    assert schema == {"ok": 1}
    exts = {r["extname"] for r in conn.execute("select extname from pg_extension")}
    assert "plpgsql_check" not in exts
    assert ("ratchet" in exts) == (ratchet_install_mode == "extension")


def test_connect_gives_separate_sessions_on_the_same_database(
    conn: Connection, connect: Callable[..., Connection]
) -> None:
    other = connect()
    tuple_rows = connect(row_factory=psycopg.rows.tuple_row, autocommit=False)
    me = conn.execute("select pg_backend_pid() as pid, current_database() as db").fetchone()
    them = other.execute("select pg_backend_pid() as pid, current_database() as db").fetchone()
    assert me is not None and them is not None
    assert me["db"] == them["db"] and me["pid"] != them["pid"]
    assert other.autocommit and not tuple_rows.autocommit
    assert tuple_rows.execute("select 1").fetchone() == (1,)


def test_set_fake_now(conn: Connection, set_fake_now: Callable[[Connection, str | None], None]):
    set_fake_now(conn, "2030-01-02 03:04:05+00")
    row = conn.execute("select ratchet.now() = '2030-01-02 03:04:05+00' as frozen").fetchone()
    assert row == {"frozen": True}
    set_fake_now(conn, None)
    row = conn.execute("select abs(extract(epoch from ratchet.now() - now())) < 60 as real")
    assert row.fetchone() == {"real": True}

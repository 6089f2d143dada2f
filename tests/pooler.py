"""A throwaway pgbouncer in transaction mode in front of a test server.

``PgBouncer(pg)`` writes a private config (trust auth, ``pool_mode =
transaction``, every database forwarded to ``pg``), starts the Debian
``pgbouncer`` binary in the foreground and waits until it accepts
connections. As root it runs as the same unprivileged OS user as the
server (pgbouncer refuses to run as root). ``dsn(dbname)`` connects through it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from ratchet.testing._embedded import EmbeddedPostgres, _OsUser

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgBouncer:
    """pgbouncer (transaction pooling) forwarding to ``pg``; ``pool_size`` server
    connections per database/user pair."""

    def __init__(self, pg: EmbeddedPostgres, *, pool_size: int = 8) -> None:
        if PGBOUNCER is None:
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.pg = pg
        self.port = _free_port()
        self._user = _OsUser.unprivileged() if os.geteuid() == 0 else _OsUser.current()
        self._dir = Path(tempfile.mkdtemp(prefix="ratchet-pgbouncer-", dir="/tmp"))  # noqa: S108
        self._dir.chmod(0o755)
        (self._dir / "userlist.txt").write_text(f'"{pg.user}" ""\n')
        self.logfile = self._dir / "pgbouncer.log"
        ini = self._dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={pg.host} port={pg.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self._dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 1000\n"
            "max_db_connections = 0\n"
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"admin_users = {pg.user}\n"
        )
        self._log = self.logfile.open("w")
        self._user.chown(self._dir)
        self.proc = subprocess.Popen(
            [PGBOUNCER, str(ini)], stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self._dir, user=self._user.uid, group=self._user.gid,
            extra_groups=[] if self._user.uid is not None else None)
        self._wait_ready()

    def dsn(self, dbname: str = "postgres", **kw: Any) -> str:
        """A DSN for ``dbname`` through the pooler."""
        return make_conninfo("", host="127.0.0.1", port=self.port, user=self.pg.user,
                             dbname=dbname, **kw)

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run a pgbouncer admin command (``SHOW POOLS``, ``KILL db``...)."""
        with psycopg.connect(self.dsn("pgbouncer"), autocommit=True,
                             prepare_threshold=None) as c:
            cur = c.execute(command)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited:\n{self.logfile.read_text()}")
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2, prepare_threshold=None) as c:
                    c.execute("select 1")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

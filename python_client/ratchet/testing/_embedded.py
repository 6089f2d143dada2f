"""A throwaway PostgreSQL cluster for the demo, the tests, the chaos harness and benchmarks.

``EmbeddedPostgres`` runs ``initdb`` into a fresh temporary directory and starts
a private server listening on a free TCP port of 127.0.0.1 and on a unix socket
in its own directory. Everything is removed again by :meth:`EmbeddedPostgres.cleanup`,
by leaving the ``with`` block, or at interpreter exit::

    with EmbeddedPostgres() as pg:
        conn = psycopg.connect(pg.dsn())

PostgreSQL refuses to run as root. When this process is root, the server
binaries run as an unprivileged OS user instead: ``postgres`` if it exists,
else a system user ``ratchet`` created on first use. The data and socket
directories are owned by that user and live under a world-traversable
directory in ``/tmp``. As a normal user the binaries simply run as that user.

The server trusts every local connection (``--auth=trust``); it is meant for
tests and demos, never for data that matters.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg.conninfo import make_conninfo

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_bindir"]

#: Prefix of the temporary directories; :meth:`EmbeddedPostgres.reap_stale` looks for it.
DIR_PREFIX = "ratchet-pg-"
#: OS user created to run the server when running as root and ``postgres`` does not exist.
FALLBACK_OS_USER = "ratchet"
#: The database superuser created by ``initdb``.
SUPERUSER = "postgres"

_PG_BINARIES = ("initdb", "pg_ctl", "postgres")
_START_ATTEMPTS = 5
_OWNER_FILE = "owner.pid"


class EmbeddedPostgresError(RuntimeError):
    """A server binary failed, or the server did not come up in time."""


def find_bindir(bindir: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Tried in order: the ``bindir`` argument, the ``RATCHET_PG_BINDIR``
    environment variable, ``pg_config --bindir``, the directory of ``initdb``
    on ``PATH``, and the newest Debian-style ``/usr/lib/postgresql/*/bin``.
    """
    candidates: list[Path] = []
    if bindir is not None:
        candidates.append(Path(bindir))
    elif os.environ.get("RATCHET_PG_BINDIR"):
        candidates.append(Path(os.environ["RATCHET_PG_BINDIR"]))
    else:
        pg_config = shutil.which("pg_config")
        if pg_config is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
                ).stdout.strip()
                if out:
                    candidates.append(Path(out))
        initdb = shutil.which("initdb")
        if initdb is not None:
            candidates.append(Path(initdb).resolve().parent)
        debian = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        )
        candidates.extend(Path(p) for p in reversed(debian))
    for cand in candidates:
        if all(os.access(cand / name, os.X_OK) for name in _PG_BINARIES):
            return cand.absolute()  # the binaries run with another cwd
    tried = ", ".join(str(c) for c in candidates) or "nothing"
    raise EmbeddedPostgresError(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; tried {tried}. "
        "Install the PostgreSQL server or set RATCHET_PG_BINDIR."
    )


def _free_port() -> int:
    """Ask the kernel for a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _quote_conf(value: object) -> str:
    """Render a value for ``postgresql.conf`` (every setting accepts a quoted string)."""
    if isinstance(value, bool):
        text = "on" if value else "off"
    else:
        text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but not been reaped yet (Linux ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2 :].startswith("Z")


def _children(pid: int) -> list[int]:
    """The ids of the direct children of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    kids: list[int] = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        # Field 4 is the parent id; the command name (field 2) may contain spaces.
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(Path(stat).parent.name))
    return kids


def _shut_down(pid: int, grace: float = 10.0) -> None:
    """Immediate shutdown of a postmaster by signal (SIGQUIT, then SIGKILL for all)."""
    kids = _children(pid)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGQUIT)  # postmaster kills its backends and cleans up
    deadline = time.monotonic() + grace
    while _pid_alive(pid) and not _is_zombie(pid):
        if time.monotonic() > deadline:
            for victim in [pid, *kids]:
                with contextlib.suppress(OSError):
                    os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.05)


def _traversable_by_all(path: Path) -> bool:
    """Whether every directory from ``/`` down to ``path`` is searchable by other users."""
    path = path.resolve()
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


class _OsUser:
    """The OS account the server binaries run as (``None`` fields: this process's own)."""

    def __init__(self, name: str | None, uid: int | None, gid: int | None, home: str | None):
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home

    @classmethod
    def current(cls) -> _OsUser:
        """Run the binaries as this process's user (no privilege change)."""
        return cls(None, None, None, None)

    @classmethod
    def unprivileged(cls, name: str | None = None) -> _OsUser:
        """Pick (or create) the unprivileged account used when running as root."""
        names = [name] if name else [SUPERUSER, FALLBACK_OS_USER]
        for candidate in names:
            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam(candidate)
                return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
        new = name or FALLBACK_OS_USER
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        proc = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", new],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        try:  # Exit status 9 (name taken) means a concurrent process created it first.
            pw = pwd.getpwnam(new)
        except KeyError:
            raise EmbeddedPostgresError(
                f"running as root and no unprivileged user to run PostgreSQL as: "
                f"`useradd {new}` failed: {proc.stderr.strip()}"
            ) from None
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)

    def chown(self, path: Path) -> None:
        """Give ``path`` to this user (no-op when running as ourselves)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


class EmbeddedPostgres:
    """A private, throwaway PostgreSQL server.

    :param fast: trade durability for speed (``fsync=off``,
        ``full_page_writes=off``). Crash tests that restart with
        ``mode="immediate"`` still work: only an OS crash would lose data.
    :param extra_conf: more ``postgresql.conf`` settings; they override the
        defaults set here.
    :param bindir: directory of the server binaries (default: :func:`find_bindir`).
    :param port: TCP port to listen on (default: a free one, retried if taken).
    :param os_user: when running as root, the OS user to run the server as
        (default ``postgres`` if it exists, else ``ratchet``, created if needed).
    :param base_dir: parent directory of the temporary directory (default: the
        system temp dir; ``/tmp`` when root and that is not traversable).
    :param start: start the server right away (default). Otherwise call :meth:`start`.
    """

    def __init__(
        self,
        *,
        fast: bool = True,
        extra_conf: Mapping[str, object] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        os_user: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        start: bool = True,
    ) -> None:
        self._bindir = find_bindir(bindir)
        self._fast = fast
        self._extra_conf = dict(extra_conf or {})
        self._port: int | None = port
        self._fixed_port = port is not None
        self._running = False
        self._started_once = False
        self._orphan_shmid: int | None = None
        self._initialized = False
        self._cleaned = False
        self._as_root = os.geteuid() == 0
        self._user = _OsUser.unprivileged(os_user) if self._as_root else _OsUser.current()
        parent = self._pick_base_dir(base_dir)
        self.reap_stale(parent)
        self._base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))
        atexit.register(self.cleanup)
        try:
            # The base dir is ours; its two children belong to the server's user.
            self._base.chmod(0o755 if self._as_root else 0o700)
            (self._base / _OWNER_FILE).write_text(f"{os.getpid()}\n")
            self._datadir = self._base / "data"
            self._sockdir = self._base / "sock"
            self._datadir.mkdir(mode=0o700)
            self._sockdir.mkdir(mode=0o755)
            self._user.chown(self._datadir)
            self._user.chown(self._sockdir)
            if start:
                self.start()
        except BaseException:
            self.cleanup()
            raise

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        """The TCP host the server listens on (always ``127.0.0.1``)."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The TCP port (also names the unix socket ``.s.PGSQL.<port>``)."""
        if self._port is None:
            raise EmbeddedPostgresError("the server has not been started yet")
        return self._port

    @property
    def user(self) -> str:
        """The database superuser to connect as."""
        return SUPERUSER

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self._datadir

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's unix socket."""
        return self._sockdir

    @property
    def bindir(self) -> Path:
        """The directory of the server binaries in use."""
        return self._bindir

    @property
    def logfile(self) -> Path:
        """The server log (``log_min_messages = warning``: warnings, errors and server events)."""
        return self._datadir / "postgresql.log"

    @property
    def os_user(self) -> str:
        """The OS user the server runs as."""
        return self._user.name or pwd.getpwuid(os.geteuid()).pw_name

    @property
    def running(self) -> bool:
        """Whether the server was started and has not been stopped or killed since."""
        return self._running

    @property
    def postmaster_pid(self) -> int | None:
        """The postmaster's process id, from ``postmaster.pid`` (``None`` if absent)."""
        try:
            first = (self._datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def dsn(self, dbname: str = "postgres", **kwargs: str | int | None) -> str:
        """A libpq keyword DSN for ``dbname`` over TCP, as the superuser.

        Extra keyword arguments are added as connection parameters
        (e.g. ``application_name="worker-1"``).
        """
        return make_conninfo(
            "", host=self.host, port=self.port, user=self.user, dbname=dbname, **kwargs
        )

    def unix_dsn(self, dbname: str = "postgres", **kwargs: str | int | None) -> str:
        """Like :meth:`dsn` but over the unix socket."""
        return make_conninfo(
            "", host=str(self._sockdir), port=self.port, user=self.user, dbname=dbname, **kwargs
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log (for error messages)."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<EmbeddedPostgres {self.host}:{self._port} {state} datadir={self._datadir}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Initialise the cluster on first use, then start it and wait until it accepts connections.

        On the first start a port already taken is retried with another free port.
        Later starts (after :meth:`stop` or :meth:`kill9_postmaster`) keep the same
        port, so DSNs handed out before stay valid.
        """
        self._check_not_cleaned()
        if self._running:
            return
        if not self._initialized:
            self._initdb()
        # Only the very first start may move to another port.
        may_move = not self._fixed_port and not self._started_once
        last_error: EmbeddedPostgresError | None = None
        for _ in range(_START_ATTEMPTS if may_move else 1):
            if self._port is None:
                self._port = _free_port()
            if may_move:  # so the log tells why *this* attempt failed
                self.logfile.unlink(missing_ok=True)
            try:
                self._pg_ctl("start", "-o", f"-p {self._port}")
            except EmbeddedPostgresError as exc:
                last_error = exc
                if may_move and "could not create any TCP/IP sockets" in str(exc):
                    self._port = None  # somebody took the port meanwhile
                    continue
                raise
            self._running = True
            self._started_once = True
            self._orphan_shmid = None  # the new postmaster removed the old segment
            self._wait_ready()
            return
        assert last_error is not None
        raise last_error

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: ``smart``, ``fast`` or ``immediate``)."""
        if not self._initialized or self._cleaned:
            return
        if self.postmaster_pid is not None:
            self._pg_ctl("stop", "-m", mode)
        self._running = False

    def restart(self, mode: str = "immediate") -> None:
        """Restart the server and wait until it accepts connections again.

        ``mode="immediate"`` is a crash as far as the database is concerned:
        every backend is killed without a checkpoint, and the next start runs
        crash recovery (what a power loss looks like, minus lost OS caches).
        Every connection open before the restart is broken afterwards.
        """
        self._check_not_cleaned()
        if not self._running:
            self.start()
            return
        self._pg_ctl("restart", "-m", mode, "-o", f"-p {self.port}")
        self._wait_ready()

    def kill9_postmaster(self, *, children: bool = True) -> None:
        """SIGKILL the postmaster (and by default all its children) without warning.

        Afterwards the server is down; call :meth:`start` to bring it back
        (it runs crash recovery). With ``children=False`` only the postmaster
        is killed; this waits until its orphaned backends notice and exit.
        """
        pid = self.postmaster_pid
        self._running = False
        if pid is None or not _pid_alive(pid) or _is_zombie(pid):
            return
        kids = _children(pid)  # before the kill: orphans get a new parent
        self._orphan_shmid = self._shmem_id()
        for victim in [pid, *kids] if children else [pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        survivors = [pid, *kids]
        deadline = time.monotonic() + 60
        while True:
            survivors = [p for p in survivors if _pid_alive(p) and not _is_zombie(p)]
            if not survivors:
                break
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"processes {survivors} outlived the postmaster")
            time.sleep(0.05)
        # Every process of the old server is dead, but a zombie keeps its pid until
        # init reaps it, and a new postmaster would take that as a live owner of the
        # lock files. They are stale now (as after a power loss), so remove them.
        for lock in (
            self._datadir / "postmaster.pid",
            self._sockdir / f".s.PGSQL.{self._port}.lock",
        ):
            lock.unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Stop the server (immediately) and delete its directories. Safe to call again."""
        if self._cleaned:
            return
        try:
            if self._initialized and self.postmaster_pid is not None:
                try:
                    self._pg_ctl("stop", "-m", "immediate", timeout=60)
                except (EmbeddedPostgresError, OSError, subprocess.SubprocessError):
                    with contextlib.suppress(EmbeddedPostgresError, OSError):
                        self.kill9_postmaster()
        finally:
            self._running = False
            self._cleaned = True
            with contextlib.suppress(Exception):
                atexit.unregister(self.cleanup)
            if self._orphan_shmid is not None and shutil.which("ipcrm"):
                # Killed and never restarted: nobody else removes its SysV segment.
                subprocess.run(["ipcrm", "-m", str(self._orphan_shmid)], capture_output=True)
            shutil.rmtree(self._base, ignore_errors=True)

    close = cleanup

    def __enter__(self) -> EmbeddedPostgres:
        if not self._running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ stale servers

    @staticmethod
    def reap_stale(parent: str | os.PathLike[str] | None = None) -> int:
        """Stop and delete servers left behind by processes that died without cleaning up.

        Looks at the ``<parent>/ratchet-pg-*`` directories created by this OS
        user whose creating process is gone, SIGKILLs their server if it still
        runs, and deletes them. Best effort: anything unexpected is skipped.
        Returns how many directories were removed.
        """
        parent_dir = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        reaped = 0
        for base in parent_dir.glob(DIR_PREFIX + "*"):
            try:
                if base.stat().st_uid != os.geteuid():
                    continue
                owner = int((base / _OWNER_FILE).read_text().strip())
                if _pid_alive(owner):
                    continue
                datadir = base / "data"
                pidfile = datadir / "postmaster.pid"
                if pidfile.exists():
                    pid = int(pidfile.read_text().split("\n", 1)[0])
                    # Only kill a postgres whose command line names this data dir
                    # (the pid may have been reused since).
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    except OSError:
                        cmdline = []  # gone
                    if os.fsencode(datadir) in cmdline:
                        _shut_down(pid)
                shutil.rmtree(base)
                reaped += 1
            except (OSError, ValueError):
                continue
        return reaped

    # ------------------------------------------------------------------ internals

    def _shmem_id(self) -> int | None:
        """The SysV shared memory id from ``postmaster.pid`` (line 7: key and id)."""
        try:
            lines = (self._datadir / "postmaster.pid").read_text().splitlines()
            return int(lines[6].split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def _check_not_cleaned(self) -> None:
        if self._cleaned:
            raise EmbeddedPostgresError("this EmbeddedPostgres was cleaned up; create a new one")

    def _pick_base_dir(self, base_dir: str | os.PathLike[str] | None) -> Path:
        if base_dir is not None:
            return Path(base_dir)
        tmp = Path(tempfile.gettempdir())
        if self._as_root and not _traversable_by_all(tmp):
            tmp = Path("/tmp")  # noqa: S108 - world-traversable by design; the dir inside is private
        return tmp

    def _settings(self) -> dict[str, object]:
        conf: dict[str, object] = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self._sockdir),
            "max_connections": 200,
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            "log_destination": "stderr",
            "logging_collector": False,
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "dynamic_shared_memory_type": "posix",
        }
        if self._fast:
            conf.update({"fsync": False, "full_page_writes": False})
        conf.update(self._extra_conf)
        return conf

    def _initdb(self) -> None:
        self._run(
            [
                str(self._bindir / "initdb"),
                "-D", str(self._datadir),
                "-U", SUPERUSER,
                "--auth=trust",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
            timeout=300,
        )  # fmt: skip
        lines = ["", "# Settings for a throwaway Ratchet test server (ratchet.testing)."]
        lines += [f"{k} = {_quote_conf(v)}" for k, v in self._settings().items()]
        conf = self._datadir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\n".join(lines) + "\n")
        self._initialized = True

    def _pg_ctl(self, action: str, *args: str, timeout: float = 180) -> None:
        cmd = [str(self._bindir / "pg_ctl"), action, "-D", str(self._datadir), "-w", "-t", "120"]
        if action in ("start", "restart"):
            cmd += ["-l", str(self.logfile)]
        self._run([*cmd, *args], what=f"pg_ctl {action}", timeout=timeout)

    def _run(self, cmd: Sequence[str], *, what: str, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({"LC_ALL": "C", "TZ": os.environ.get("TZ", "UTC")})
        if self._user.name is not None:
            env.update({"USER": self._user.name, "LOGNAME": self._user.name})
            env["HOME"] = self._user.home or "/"
        try:
            proc = subprocess.run(
                list(cmd),
                cwd=self._base,  # the caller's cwd may not be readable by the server user
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                user=self._user.uid,
                group=self._user.gid,
                extra_groups=[] if self._user.uid is not None else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{what} timed out after {timeout}s\n--- server log ---\n{self.log_tail()}"
            ) from exc
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stdout}{proc.stderr}\n--- server log ---\n{self.log_tail()}"
            )

    def _wait_ready(self, timeout: float = 60) -> None:
        """Wait until a TCP connection succeeds (pg_ctl -w already waited on the socket)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5, autocommit=True) as conn:
                    conn.execute("select 1")
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"server did not accept connections within {timeout}s: {exc}\n"
                        f"--- server log ---\n{self.log_tail()}"
                    ) from exc
                time.sleep(0.1)

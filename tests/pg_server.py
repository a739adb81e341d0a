"""A throwaway PostgreSQL server for the tests: Debian's ``initdb`` and ``pg_ctl`` in a temporary folder.

:class:`PgServer` creates a cluster in a new temporary folder, starts it on a free loopback
port (its socket in the same folder, so it never meets a system server), hands out one fresh
database per test (:meth:`PgServer.create_database`) and removes everything on
:meth:`PgServer.stop`. As root it runs the server as the ``postgres`` user (PostgreSQL refuses
to run as root) and gives that user the folder. :func:`start_server` returns ``None`` with the
reason when no server can be started (no binaries, no ``postgres`` user, a failed start), so
the tests that need one skip and say why.

The cluster trusts local connections (no password) and skips fsync: it holds test data only,
and what the tests check (a killed client, a restarted server) does not depend on the disk.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PgServer", "find_bin_dir", "start_server"]

#: Environment variable naming the folder of ``initdb`` and ``pg_ctl`` when they are elsewhere.
BIN_ENV = "FER_PG_BIN"
_USER = "postgres"
_START_TIMEOUT_S = 60


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: ``$FER_PG_BIN``, the PATH, else Debian's newest version."""
    candidates = [os.environ.get(BIN_ENV)]
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else None)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temporary folder, on a free port of 127.0.0.1.

    Use :func:`start_server`; then :meth:`url` / :meth:`create_database` for the tests,
    :meth:`stop_server` and :meth:`start_server` to restart it under them, :meth:`stop` at the end.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="fer_pg_"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.running = False
        self._engine = None  # one AUTOCOMMIT engine for CREATE / DROP DATABASE (a new one costs 0.2 s)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program, as the ``postgres`` user when this process is root."""
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", _USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=_START_TIMEOUT_S, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
        return result

    def init(self) -> None:
        """Create the cluster (``initdb``): UTF-8, trust authentication for local connections."""
        if self._as_root:
            shutil.chown(self.root, user=_USER, group=_USER)
        self._run("initdb", "-D", str(self.data), "-U", _USER, "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions")

    def start_server(self) -> None:
        """Start (or start again) the server on :attr:`port` and wait until it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                  "-t", str(_START_TIMEOUT_S), "start")
        self.running = True

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``: open connections are cut, as in a restart)."""
        if self._engine is not None:
            self._engine.dispose()
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "fer") -> str:
        """Create a new, empty database and return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (its connections are cut first)."""
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        if self._engine is None:
            self._engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with self._engine.connect() as conn:
            conn.execute(text(statement))

    def log(self) -> str:
        """The server's log so far (for a failure message)."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        try:
            if self._engine is not None:
                self._engine.dispose()
            if self.running:
                self.stop_server("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> tuple[PgServer | None, str]:
    """A started :class:`PgServer`, or ``None`` and the reason none could be started."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None, (f"no PostgreSQL server programs (initdb, pg_ctl) on PATH, in ${BIN_ENV} or in "
                      "/usr/lib/postgresql/*/bin: install Debian's postgresql package (.ci/run does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "the psycopg driver is not installed (pip install -r requirements.txt)"
    server = PgServer(bin_dir)
    if server._as_root:
        try:
            import pwd

            pwd.getpwnam(_USER)
        except KeyError:
            server.stop()
            return None, f"running as root and there is no {_USER!r} user to run the server as"
    try:
        server.init()
        server.start_server()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        log = server.log()[-500:]
        server.stop()
        return None, f"could not start a PostgreSQL server: {exc}" + (f"\n{log}" if log else "")
    return server, ""

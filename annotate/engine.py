"""Where the annotation database lives and how to talk to it safely: the one module that knows SQLite.

Everything else in :mod:`annotate` is plain SQLAlchemy and runs unchanged on PostgreSQL
(``FER_DB_URL=postgresql+psycopg://user:pw@host/db`` for a team server).

SQLite settings, applied to every new connection (see :func:`_sqlite_on_connect`):

``journal_mode=WAL``
    Readers never block the writer and the writer never blocks readers; a killed process
    leaves a WAL that the next open replays or discards (no torn commits).
``synchronous=FULL``
    The WAL is fsynced at every commit. ``NORMAL`` keeps commits across a process crash but
    may lose the last ones on power loss; a decision is a person's minute of work and is
    acknowledged to them, so it must survive both. The cost is one fsync per decision,
    far below human labelling speed.
``foreign_keys=ON``
    SQLite ignores foreign keys unless asked; decisions must point at real faces.
``busy_timeout`` = :data:`BUSY_TIMEOUT_S`
    A writer waits for the lock instead of failing at once.

Write transactions start with ``BEGIN IMMEDIATE`` on SQLite: the write lock is taken before
the first read, so a read-then-write transaction (pick a free face, then lease it) is
serialised across processes and never fails with ``SQLITE_BUSY_SNAPSHOT`` mid-way. Reads use
a plain (deferred) ``BEGIN``.

PostgreSQL (``postgresql+psycopg://user:password@host:port/database``, driver ``psycopg`` 3):
write transactions first take a transaction-scoped advisory lock (``pg_advisory_xact_lock``,
one key per database, released at commit or rollback), the same guarantee as SQLite's
``BEGIN IMMEDIATE``: writers run one after the other, so a read-then-write transaction sees
no other writer between its read and its write; readers are never blocked (MVCC). The lease
table's primary key would catch a race anyway, and the transaction would be retried.
Connections are checked before use (``pool_pre_ping``) and a connection attempt gives up
after :data:`CONNECT_TIMEOUT_S`.

Busy and locked errors that outlast the busy timeout are retried by :func:`retry` with
exponential backoff for :data:`RETRY_DEADLINE_S`; only then does :class:`StoreBusyError` reach a caller.
A lost connection to a database server (it restarted, or is restarting) is retried the same way
for :data:`RECONNECT_DEADLINE_S`; then :class:`StoreUnavailableError` says so. A transaction cut
off while it committed may have committed: the store's writes are written so that running them
again adds nothing twice (see :meth:`annotate.store.Store.record_decision`).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from .errors import AnnotateError, StoreBusyError, StoreUnavailableError

__all__ = [
    "DB_FILENAME",
    "DATA_DIR",
    "ENV_VAR",
    "BUSY_TIMEOUT_S",
    "RETRY_DEADLINE_S",
    "RECONNECT_DEADLINE_S",
    "CONNECT_TIMEOUT_S",
    "DbChoice",
    "choose_default_db",
    "default_db_url",
    "to_url",
    "create_store_engine",
    "writer",
    "is_sqlite",
    "is_transient",
    "is_disconnect",
    "retry",
    "integrity_check",
]

#: File name of the default SQLite database.
DB_FILENAME: str = "fer_annotations.db"
#: Persistent storage of a Hugging Face Space; used for the default database when it exists.
DATA_DIR: Path = Path("/data")
#: Environment variable that overrides the default database URL.
ENV_VAR: str = "FER_DB_URL"
#: How long one SQLite statement waits for a lock before reporting busy (seconds).
BUSY_TIMEOUT_S: float = 30.0
#: How long :func:`retry` keeps retrying busy/locked errors before giving up (seconds).
RETRY_DEADLINE_S: float = 120.0
#: How long :func:`retry` keeps reconnecting to a database server that cannot be reached (seconds):
#: long enough to hide a server's restart, short enough for a person waiting on an answer.
RECONNECT_DEADLINE_S: float = 10.0
#: How long one connection attempt to a database server may take (seconds).
CONNECT_TIMEOUT_S: int = 5

# Execution option that marks a connection whose transactions write (BEGIN IMMEDIATE on SQLite).
_WRITE_OPTION = "annotate_write"

# SQLite primary result codes for "busy" and "locked" (extended codes keep them in the low byte).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock, lock not available.
_PG_TRANSIENT = {"40001", "40P01", "55P03"}
# PostgreSQL SQLSTATEs of a server going away or not there yet: admin/crash shutdown, starting up
# (class 08, connection exceptions, is matched by its prefix).
_PG_DISCONNECT = {"57P01", "57P02", "57P03"}
# Failed connection attempts that waiting does not cure (libpq's messages): raised at once.
_PG_REFUSALS = ("authentication failed", "does not exist", "no pg_hba.conf entry", "could not translate host name")
# The key of the advisory lock that PostgreSQL write transactions take (ASCII "FER_").
_PG_WRITE_LOCK = 0x4645525F

T = TypeVar("T")


@dataclass(frozen=True)
class DbChoice:
    """The default annotation database and why it was chosen (see :func:`choose_default_db`)."""

    #: The URL to connect to (a password in it is kept).
    url: str
    #: One sentence for the start-up log, such as ``"using /data/fer_annotations.db (persistent storage)"``.
    reason: str
    #: ``None``, or a sentence to show loudly (log and page) when the answers will not be kept.
    warning: str | None = None


def choose_default_db(environ: Mapping[str, str] | None = None, *, data_dir: str | Path = DATA_DIR,
                      cwd: str | Path | None = None) -> DbChoice:
    """The database to use when none is given, with the reason and, when answers would be lost, a warning.

    ``$FER_DB_URL`` if set (a URL, or a plain file path taken as SQLite); otherwise the SQLite
    file :data:`DB_FILENAME` in ``data_dir`` (``/data``: a Hugging Face Space's persistent storage
    or a Docker volume) when a file can be created there, else in ``cwd`` (default: the current
    working directory). When ``data_dir`` exists but refuses a new file (a volume owned by
    another user), the warning says that the answers go into the container and how to fix it.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        url = to_url(env[ENV_VAR])
        return DbChoice(_connect_string(url), f"using {_shown(url)} from {ENV_VAR}")
    data = Path(data_dir)
    if _can_create_files(data):
        url = to_url(data.resolve() / DB_FILENAME)
        return DbChoice(_connect_string(url), f"using {url.database} (persistent storage)")
    url = to_url((Path(cwd) if cwd is not None else Path.cwd()).resolve() / DB_FILENAME)
    warning = None
    if data.exists():
        uid = _uid()
        warning = (f"{data} exists but this process (uid {uid}) cannot create files in it, so the relabel answers "
                   f"go to {url.database}; in a container they are lost when it is removed. To keep them, make "
                   f"{data} writable for uid {uid} (for a folder of the host mounted there: `chown {uid}` it), "
                   f"mount a named volume there (`docker run -v fer-data:{data} ...`), or set {ENV_VAR}.")
    return DbChoice(_connect_string(url), f"using {url.database}", warning)


def default_db_url(environ: Mapping[str, str] | None = None, *, data_dir: str | Path = DATA_DIR,
                   cwd: str | Path | None = None) -> str:
    """The URL of :func:`choose_default_db` (``$FER_DB_URL``, else ``/data``, else ``cwd``)."""
    return choose_default_db(environ, data_dir=data_dir, cwd=cwd).url


def _connect_string(url: URL) -> str:
    # str(URL) masks the password as "***"; this URL is used to connect.
    return url.render_as_string(hide_password=False)


def _shown(url: URL) -> str:
    """A URL for people: the file of a SQLite URL, the password masked otherwise."""
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)


def _uid() -> str:
    return str(os.geteuid()) if hasattr(os, "geteuid") else "?"


def _can_create_files(folder: Path) -> bool:
    """True when a file can be created in ``folder`` (tried for real: permission bits do not bind
    root, and a read-only mount refuses whatever they say)."""
    if not folder.is_dir():
        return False
    try:
        handle, probe = tempfile.mkstemp(prefix=".fer_write_check_", dir=folder)
    except OSError:
        return False
    os.close(handle)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def to_url(url_or_path: str | os.PathLike[str] | URL) -> URL:
    """A SQLAlchemy URL from a URL string or a plain file path (taken as a SQLite file)."""
    if isinstance(url_or_path, URL):
        return url_or_path
    if isinstance(url_or_path, os.PathLike) or "://" not in str(url_or_path):
        path = Path(url_or_path).expanduser().resolve()
        return URL.create("sqlite", database=str(path))
    try:
        return make_url(str(url_or_path))
    except ArgumentError as exc:
        raise AnnotateError(f"not a database URL: {str(url_or_path)!r} ({exc})") from None


def is_sqlite(engine: Engine) -> bool:
    """True when ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def create_store_engine(url: str | os.PathLike[str] | URL) -> Engine:
    """An Engine for the store at ``url``, with the SQLite safety settings when it is SQLite.

    Raises :class:`AnnotateError` when a SQLite file's folder does not exist (SQLite's own
    message, "unable to open database file", does not say which folder).
    """
    url = to_url(url)
    if url.get_backend_name() == "postgresql":
        # pool_pre_ping: a team server restarts; a dead pooled connection is replaced, not reported.
        engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        event.listen(engine, "begin", _postgresql_on_begin)
        return engine
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        folder = Path(database).expanduser().resolve().parent
        if not folder.is_dir():
            raise AnnotateError(
                f"cannot create the annotation database {database!r}: folder {str(folder)!r} does not exist"
            )
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection PRAGMAs; also hands BEGIN over to :func:`_sqlite_on_begin`."""
    # The sqlite3 module's own implicit BEGIN is deferred and skips SELECTs; SQLAlchemy's
    # documented recipe is to switch it off and emit BEGIN ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so that switching to WAL waits for a lock rather than failing.
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    """``BEGIN IMMEDIATE`` for write transactions (see :func:`writer`), plain ``BEGIN`` for reads."""
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _postgresql_on_begin(conn: Any) -> None:
    """Write transactions (see :func:`writer`) take the store's advisory lock first; reads take nothing."""
    if conn.get_execution_options().get(_WRITE_OPTION, False):
        conn.execute(select(func.pg_advisory_xact_lock(_PG_WRITE_LOCK)))


def writer(engine: Engine) -> Engine:
    """A view of ``engine`` whose transactions take the write lock up front on SQLite.

    On PostgreSQL they take the store's advisory lock first (writers one at a time, as on
    SQLite). Shares the connection pool of ``engine``; use it for every transaction that writes.
    """
    return engine.execution_options(**{_WRITE_OPTION: True})


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "try again": SQLite busy/locked, PostgreSQL serialization failure or deadlock."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    message = str(orig).lower()
    if "database is locked" in message or "database is busy" in message or "database table is locked" in message:
        return True
    sqlstate = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    return sqlstate in _PG_TRANSIENT


def is_disconnect(exc: BaseException) -> bool:
    """True when ``exc`` means the database server cannot be reached or dropped the connection.

    SQLAlchemy's own judgement (``connection_invalidated``), a failed connection attempt (no
    SQLSTATE) other than a refusal that waiting does not cure (a wrong password, database or
    host name), or a PostgreSQL SQLSTATE of class 08 (connection exception) or 57P01-57P03
    (server shutting down or starting up). Never true on SQLite, which has no server.
    """
    if not isinstance(exc, OperationalError) or exc.orig is None:
        return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
    if exc.connection_invalidated:
        return True
    if getattr(exc.orig, "sqlite_errorcode", None) is not None or type(exc.orig).__module__.startswith("sqlite3"):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if sqlstate is None:  # the connection attempt failed: a wrong address or password is not worth waiting on
        return not any(refusal in str(exc.orig).lower() for refusal in _PG_REFUSALS)
    return sqlstate.startswith("08") or sqlstate in _PG_DISCONNECT


def retry(fn: Callable[[], T], *, deadline_s: float = RETRY_DEADLINE_S,
          on_retry: Callable[[BaseException], None] | None = None) -> T:
    """Call ``fn`` until it does not raise a transient database error, with exponential backoff.

    ``fn`` must be a whole transaction (it is re-run from the start). Waits start at 5 ms and
    double up to 0.5 s, with jitter so that colliding writers spread out. After ``deadline_s``
    seconds the last error is raised as :class:`StoreBusyError`. A lost connection
    (:func:`is_disconnect`) is retried for :data:`RECONNECT_DEADLINE_S` seconds (read when
    called), then raised as :class:`StoreUnavailableError`.
    """
    start = time.monotonic()
    delay = 0.005
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            lost = is_disconnect(exc)
            if not lost and not is_transient(exc):
                raise
            waited = time.monotonic() - start
            if lost and waited > RECONNECT_DEADLINE_S:
                raise StoreUnavailableError(
                    f"the annotation database server cannot be reached ({_first_line(exc.orig)}); it may be "
                    "restarting. Nothing was half-written: try again in a moment"
                ) from exc
            if not lost and waited > deadline_s:
                raise StoreBusyError(
                    f"the annotation database stayed locked for more than {deadline_s:.0f} s ({exc.orig}); "
                    "another process may be stuck holding it"
                ) from exc
            if on_retry is not None:
                on_retry(exc)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)


def _first_line(error: BaseException | None) -> str:
    """The first line of a driver error (psycopg's messages go on with hints)."""
    return (str(error).strip().splitlines() or ["no message"])[0]


def integrity_check(engine: Engine) -> str | None:
    """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` for a sound file); ``None`` on other databases."""
    if not is_sqlite(engine):
        return None
    with engine.connect() as conn:
        rows = conn.execute(text("PRAGMA integrity_check")).scalars().all()
    return "ok" if rows == ["ok"] else "; ".join(map(str, rows))

"""What one request, one visitor and the whole app may cost the server: files, bytes, queue places, temp files.

- :func:`trusted_upload` accepts a file path sent with a request only inside Gradio's upload
  folder (or the app's own example photos), and refuses every other path with one message that
  says nothing about it.
- :class:`BodySizeLimit` refuses any request body over a byte limit before it is read (data URLs
  in JSON bodies would otherwise bypass the upload size limit).
- :class:`UploadQuota` refuses new uploads while Gradio's upload folder holds more than a quota.
- :func:`limit_waiting` bounds how many events of one concurrency group may wait in Gradio's
  queue, so a burst of one kind (``predict``) never fills the places of another (Relabel).
- :class:`TempFiles` keeps the files the app writes for downloads in one folder, reuses a file
  for the same content, and deletes what is older than a time to live.
- :class:`SessionJanitor` forgets the per-session data Gradio keeps for visitors that went idle.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fer_core._validation import FERError
from fer_core.config import EXAMPLES_DIR

__all__ = [
    "HEAVY",
    "HEAVY_WAITING",
    "MAX_BODY_BYTES",
    "NOT_UPLOADED",
    "UploadRefused",
    "trusted_upload",
    "BodySizeLimit",
    "UploadQuota",
    "UPLOAD_QUOTA_BYTES",
    "limit_waiting",
    "TempFiles",
    "SessionJanitor",
    "light_sessions",
    "release_free_memory",
    "BlockedRoutes",
    "port_in_use",
]

#: Concurrency group of the events that decode images, run the model or write exports (photo, predict,
#: frames, face picks, Browse exports): together they run the app's default number of calls at once
#: (2), and memory is budgeted for that many.
HEAVY = "heavy"
#: How many heavy events may wait; beyond that a caller is told at once that the server is busy.
HEAVY_WAITING = 48
#: Largest request body: a 25 MB file as a base64 data URL in JSON, with room for the rest.
MAX_BODY_BYTES = 36_000_000
#: The one answer to a file path that was not uploaded to this app.
NOT_UPLOADED = ("this image was not uploaded to this app: send the file itself "
                "(in Python, gradio_client.handle_file(path))")


class UploadRefused(FERError):
    """A request named a file that is not one of its uploads."""


def _upload_roots() -> list[Path]:
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder()).resolve(), EXAMPLES_DIR.resolve()]


def trusted_upload(path: str | os.PathLike, *, roots: Iterable[Path] | None = None) -> str:
    """``path`` resolved, when it is a file inside Gradio's upload folder or the example photos.

    Symbolic links are followed before the check, so a link in the upload folder that points
    elsewhere is refused too. ``roots`` replaces the allowed folders (for tests).

    Raises
    ------
    UploadRefused
        Anywhere else, with :data:`NOT_UPLOADED` whether the path exists or not.
    """
    allowed = [Path(r).resolve() for r in roots] if roots is not None else _upload_roots()
    try:
        resolved = Path(os.fspath(path)).resolve(strict=False)
    except (OSError, RuntimeError, ValueError, TypeError):
        raise UploadRefused(NOT_UPLOADED) from None
    if not any(resolved.is_relative_to(root) for root in allowed):
        raise UploadRefused(NOT_UPLOADED)
    return str(resolved)


class BodySizeLimit:
    """ASGI middleware: a request whose body is larger than ``max_bytes`` gets HTTP 413, unread.

    A declared ``Content-Length`` over the limit is refused before any byte is read; a body
    without one (chunked) is counted as it arrives and cut off at the limit.
    """

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counted_receive() -> dict:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted_receive, send)
        except _BodyTooLarge:
            if refused:
                await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        await send_json(send, 413, {"error": f"the request is larger than {self.max_bytes // 1_000_000} MB"})


class _BodyTooLarge(Exception):
    pass


async def send_json(send: Callable, status: int, payload: dict) -> None:
    """Answer an ASGI request with ``status`` and ``payload`` as JSON."""
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


#: Most disk Gradio's upload folder may hold (uploads, and the app's downloads written there);
#: beyond it new uploads wait until old files are deleted.
UPLOAD_QUOTA_BYTES = 3_000_000_000


class UploadQuota:
    """ASGI middleware: a new upload is refused (HTTP 507) while the upload folder holds ``quota_bytes`` or more.

    Gradio deletes uploads an hour after they arrive (``delete_cache``); this bounds what a burst
    of uploads can put on the disk before that. The folder's size is measured at most every
    ``every_s`` seconds.
    """

    def __init__(self, app: Any, quota_bytes: int = UPLOAD_QUOTA_BYTES, folder: Path | None = None,
                 every_s: float = 5.0) -> None:
        self.app, self.quota_bytes, self.every_s = app, quota_bytes, every_s
        self.folder = folder
        self._measured_at, self._size = 0.0, 0

    def used_bytes(self) -> int:
        if time.monotonic() - self._measured_at > self.every_s:
            from gradio.utils import get_upload_folder

            root = self.folder or Path(get_upload_folder())
            self._size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0
            self._measured_at = time.monotonic()
        return self._size

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.rstrip("/").endswith("/upload") and self.used_bytes() >= self.quota_bytes:
            await send_json(send, 507, {"detail": "the server holds too many uploads just now: try again in a few "
                                                  "minutes"})
            return
        await self.app(scope, receive, send)


def limit_waiting(queue: Any, limits: dict[str, int]) -> None:
    """Bound the events waiting in Gradio's ``queue`` per concurrency group (``{group: places}``).

    Gradio's own ``max_size`` counts every event together, so a burst of ``predict`` calls
    would leave no place for a Relabel answer. A group at its bound is answered "queue full"
    at once, as Gradio answers a full queue; other groups are not affected.
    """
    push = queue.push

    async def bounded_push(body: Any, request: Any, username: Any):
        from gradio import route_utils

        fn = route_utils.get_fn(queue.blocks, None, body) if body.fn_index is not None else None
        group = getattr(fn, "concurrency_id", None)
        if group in limits:
            waiting = queue.event_queue_per_concurrency_id.get(group)
            if waiting is not None and len(waiting.queue) >= limits[group]:
                return False, "The server is busy: too many images are waiting. Try again in a moment.", "queue_full"
        return await push(body, request, username)

    queue.push = bounded_push


class TempFiles:
    """Files written for downloads, in one folder, each kept ``ttl_s`` seconds after it was last handed out.

    :meth:`claim` gives a folder per key (a content hash: the same content reuses its folder);
    every claim sweeps folders older than the time to live, then the oldest ones while the
    folder holds more than ``max_bytes``, and the whole root goes at exit. The root lies in
    Gradio's upload folder by default, so Gradio serves the files from there instead of
    copying them (and deletes them with its own when the app stops).
    """

    def __init__(self, name: str, *, ttl_s: float = 900.0, max_bytes: int = 200_000_000,
                 root: Path | None = None) -> None:
        self.name = f"fer_{name}_{os.getpid()}"
        self._base = root
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        atexit.register(lambda: shutil.rmtree(self.root, ignore_errors=True))

    @property
    def root(self) -> Path:
        if self._base is None:
            from gradio.utils import get_upload_folder

            self._base = Path(get_upload_folder())
        return self._base / self.name

    @staticmethod
    def key(*parts: bytes | str) -> str:
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part.encode() if isinstance(part, str) else part)
            digest.update(b"\0")
        return digest.hexdigest()[:32]

    @contextmanager
    def claim(self, key: str) -> Iterator[tuple[Path, bool]]:
        """The folder for ``key`` and whether it already held files (then reuse them), held for writing.

        Two requests for the same key at once write it one after the other: the second finds
        the first one's files instead of writing over them.
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                self.sweep()
                folder = self.root / key
                existed = folder.is_dir() and any(folder.iterdir())
                folder.mkdir(parents=True, exist_ok=True)
                os.utime(folder)
            yield folder, existed

    def sweep(self, now: float | None = None) -> int:
        """Delete folders past the time to live, then the oldest while over ``max_bytes``; returns how many went.

        A folder being written (its key claimed) is never deleted.
        """
        now = time.time() if now is None else now
        if not self.root.is_dir():
            return 0
        folders = []
        for folder in self.root.iterdir():
            try:
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                folders.append((folder.stat().st_mtime, size, folder))
            except FileNotFoundError:
                continue
        folders.sort()
        total, removed = sum(size for _, size, _ in folders), 0
        for mtime, size, folder in folders:
            if now - mtime <= self.ttl_s and total <= self.max_bytes:
                break
            lock = self._key_locks.get(folder.name)
            if lock is not None and lock.locked():
                continue
            shutil.rmtree(folder, ignore_errors=True)
            self._key_locks.pop(folder.name, None)
            total -= size
            removed += 1
        return removed

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) if self.root.is_dir() else 0


class SessionJanitor:
    """Forgets the per-session data Gradio keeps, once a session is no longer used.

    Gradio keeps a copy of every component's settings per session (tens of kB) until its
    capacity of sessions is reached, and every API call made without a browser (``/call/...``)
    opens a new session. As ASGI middleware this object notes which sessions hold a heartbeat
    (an open page, or a ``gradio_client``); :meth:`sweep` forgets sessions without one once idle
    for ``api_idle_s``, sessions whose page was closed once idle for ``closed_idle_s``, and any
    session idle for ``idle_s``.
    """

    def __init__(self, app: Any = None, *, api_idle_s: float = 30.0, closed_idle_s: float = 600.0,
                 idle_s: float = 7200.0, max_tracked: int = 100_000) -> None:
        self.app = app
        self.api_idle_s, self.closed_idle_s, self.idle_s = api_idle_s, closed_idle_s, idle_s
        self.max_tracked = max_tracked
        self.with_heartbeat: dict[str, None] = {}  # insertion-ordered set, oldest first

    def wrap(self, app: Any) -> SessionJanitor:
        self.app = app
        return self

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if "/heartbeat/" in path:
            session = path.rsplit("/heartbeat/", 1)[1].strip("/")
            if session:
                self.with_heartbeat[session] = None
                while len(self.with_heartbeat) > self.max_tracked:
                    self.with_heartbeat.pop(next(iter(self.with_heartbeat)))
        await self.app(scope, receive, send)

    def sweep(self, holder: Any, now: datetime.datetime | None = None) -> int:
        """Forget the sessions of Gradio's ``holder`` (``blocks.state_holder``) that are done; returns how many."""
        now = now or datetime.datetime.now()
        with holder.lock:
            done = [sid for sid, used in list(holder.time_last_used.items())
                    if self._done(sid, holder.session_data.get(sid), (now - used).total_seconds())]
            for sid in done:
                session = holder.session_data.pop(sid, None)
                holder.time_last_used.pop(sid, None)
                self.with_heartbeat.pop(sid, None)
                if session is not None:
                    for component, value, _ in list(session.state_components):
                        component.delete_callback(value)
        return len(done)

    def _done(self, session_id: str, session: Any, idle: float) -> bool:
        if idle > self.idle_s:
            return True
        if session_id not in self.with_heartbeat:
            return idle > self.api_idle_s
        return bool(getattr(session, "is_closed", False)) and idle > self.closed_idle_s

    def start(self, blocks: Any, *, every_s: float = 10.0) -> threading.Thread:
        """Sweep ``blocks``' sessions every ``every_s`` seconds in a daemon thread, then release freed memory."""

        def sweep_forever() -> None:
            while True:
                time.sleep(every_s)
                self.sweep(blocks.state_holder)
                release_free_memory()

        thread = threading.Thread(target=sweep_forever, name="fer-session-janitor", daemon=True)
        thread.start()
        return thread


def release_free_memory() -> None:
    """Hand memory that Python and NumPy freed back to the system (glibc's ``malloc_trim``).

    After a large image the freed heap stays with the process otherwise, and its resident
    memory stays at its peak. Does nothing where the C library has no ``malloc_trim``.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def light_sessions(holder: Any) -> None:
    """Make Gradio's ``holder`` (``blocks.state_holder``) create sessions without a copy of every setting.

    A new Gradio session copies the settings of every component at once (about 240 kB here,
    the Browse plots' data included), although an event only reads those of its own inputs and
    outputs, which Gradio fills in one by one when missing. Every ``/call/...`` request opens a
    session, so this copy was most of what API traffic cost. The copy is only ever read whole by
    the deep-link route, which :class:`BlockedRoutes` closes.
    """
    from gradio.state_holder import SessionState, StateHolder

    class _ComponentsOnDemand:
        """What ``SessionState`` reads of the app: its settings, and no block to copy up front."""

        def __init__(self, blocks: Any) -> None:
            self.default_config = blocks.default_config
            self.blocks: dict = {}

    class LightStateHolder(StateHolder):
        def __getitem__(self, session_id: str) -> SessionState:
            if session_id not in self.session_data:
                self.session_data[session_id] = SessionState(_ComponentsOnDemand(self.blocks))
            return super().__getitem__(session_id)

    holder.__class__ = LightStateHolder


class BlockedRoutes:
    """ASGI middleware: paths the app does not use answer 404 (Gradio's deep links write a file per call)."""

    def __init__(self, app: Any, suffixes: tuple[str, ...] = ("/gradio_api/deep_link",)) -> None:
        self.app = app
        self.suffixes = suffixes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/").endswith(self.suffixes):
            await send_json(send, 404, {"detail": "Not Found"})
            return
        await self.app(scope, receive, send)


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound now (another server listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False

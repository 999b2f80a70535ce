"""The control channel of a running mount: ``s3files sync`` asks the daemon to upload now, ``s3files
exec --publish on-success`` ends its hold once the command succeeded (``publish-held``), and ``s3files
stats`` asks for its counters (``stats``).

Owns: where the channel is (``control.sock`` in the mount's cache folder: only the mount's user can
reach it, the folder being 0700, and ``s3files status`` already finds that folder from a mount point),
the protocol (one JSON object per line each way: a request ``{"op": "sync", "path": "sub/dir" | null}``
or ``{"op": "publish-held"}``, an answer ``{"ok": true, "failed": {"path": "why", ...}}``; or
``{"op": "stats"}``, answered ``{"ok": true, "stats": {...}}``; any error ``{"ok": false, "error": "..."}``), the
daemon's side (``serve``, a task on the mount's nursery, fuse/mount.py) and the client's (``request``).
Must not import pyfuse3 (the CLI imports this) nor decide what a sync does (core/fs.py ``sync``,
``publish_held``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024  # bytes of one request; anything longer is refused
SUN_PATH_MAX = 107  # bytes of a Unix socket's path the kernel takes (108 with the final NUL)

Sync = Callable[[str | None], Awaitable[dict[str, str]]]
PublishHeld = Callable[[], Awaitable[dict[str, str]]]
Stats = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class Handlers:
    """What the daemon answers with: each a call into the room that decides it."""

    sync: Sync  # core/fs.py
    publish_held: PublishHeld  # core/fs.py
    stats: Stats  # the mount's counters: fs.statistics() and the FUSE operations (fuse/mount.py)


class ControlError(Exception):
    """The daemon cannot be asked, or answered with an error; ``str()`` is the one line to print."""


def socket_path(root: Path) -> Path:
    """The control socket of the mount whose cache folder is ``root``."""
    return root / SOCKET_NAME


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """An address for ``path`` the kernel accepts: the path itself, or, when it is too long for a Unix
    socket (a long --cache-dir and bucket name), the same file through ``/proc/self/fd/<folder fd>``."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# -- the daemon's side ------------------------------------------------------------------------------------


async def serve(root: Path, handlers: Handlers) -> None:
    """Answer requests on ``root``'s control socket until cancelled (the mount ends); removes it then."""
    path = socket_path(root)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a daemon that died: the folder's lock says it is ours now
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path) as address:
            await listener.bind(address)
            os.chmod(address, 0o600)  # the mount's user only, whatever the umask
        listener.listen(16)
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_answer, conn, handlers)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()


async def _answer(conn: trio.socket.SocketType, handlers: Handlers) -> None:
    """One request. Whatever goes wrong is answered and logged, never raised: the mount goes on."""
    stream = trio.SocketStream(conn)
    async with stream:
        try:
            line = await _read_line(stream)
            reply = await _handle(json.loads(line), handlers)
        except (ValueError, OSError, trio.BrokenResourceError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except Exception as exc:
            log.exception("op=control request failed")
            reply = {"ok": False, "error": f"the daemon failed: {exc!r}"}
        try:
            await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (OSError, trio.BrokenResourceError) as exc:  # the client gave up (its timeout, or ^C)
            log.info("op=control the client left before the answer: %s", exc)


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise ValueError("request too long")
    return data.split(b"\n", 1)[0]


async def _handle(request: Any, handlers: Handlers) -> dict[str, Any]:
    op = request.get("op") if isinstance(request, dict) else None
    if op == "stats":
        return {"ok": True, "stats": dict(handlers.stats())}
    if op == "publish-held":
        log.info("op=publish-held requested: uploads are held back no more")
        failed = await handlers.publish_held()
        for name, why in failed.items():
            log.warning("op=publish-held path=%r not in S3: %s", name, why)
        return {"ok": True, "failed": failed}
    if op != "sync":
        return {"ok": False, "error": "unknown request (this daemon knows: sync, publish-held, stats)"}
    path = request.get("path")
    if path is not None and not isinstance(path, str):
        return {"ok": False, "error": "path must be a string or null"}
    log.info("op=sync path=%r requested", path or "")
    failed = await handlers.sync(path)
    for name, why in failed.items():
        log.warning("op=sync path=%r not in S3: %s", name, why)
    return {"ok": True, "failed": failed}


# -- the client's side -------------------------------------------------------------------------------------


def _root_of(mountpoint: Path, cache_dir: Path) -> tuple[str, Path]:
    """The canonical mount point and its cache folder; ControlError with one line if not a mount."""
    from s3files.status import StatusError, canonical, folder_of_mountpoint

    where = canonical(mountpoint)
    try:
        return where, folder_of_mountpoint(where, cache_dir)
    except StatusError as exc:
        raise ControlError(str(exc)) from None


def stats_of(mountpoint: Path, cache_dir: Path, timeout: float | None = 10.0) -> dict[str, Any]:
    """The counters of the mount at ``mountpoint`` (``s3files stats``): ControlError if it cannot say."""
    _, root = _root_of(mountpoint, cache_dir)
    return dict(request(root, {"op": "stats"}, timeout).get("stats") or {})


def sync_mount(
    mountpoint: Path, path: Path | None, cache_dir: Path, timeout: float | None = None
) -> tuple[str, dict[str, str]]:
    """Ask the daemon of the mount at ``mountpoint`` (its cache folder in ``cache_dir``) to upload what
    waits, or what is at or below ``path`` (a path in the mount), and wait: the mount point (canonical)
    and, per file not in S3 after, its path in the mount and why. ControlError with one line if the
    daemon cannot be asked or ``path`` is not in the mount."""
    from s3files.status import canonical

    where, root = _root_of(mountpoint, cache_dir)
    inside = None
    if path is not None:
        relative = os.path.relpath(canonical(path), where)
        if relative == ".." or relative.startswith("../"):
            raise ControlError(f"{path} is not inside the mount at {where}")
        inside = None if relative == "." else relative
    answer = request(root, {"op": "sync", "path": inside}, timeout)
    failed = answer.get("failed") or {}
    return where, {str(name): str(why) for name, why in failed.items()}


def publish_held(root: Path, timeout: float | None = None) -> dict[str, str]:
    """Ask the daemon of cache folder ``root`` to end its hold and upload what it held back (``s3files
    exec --publish on-success``, the command succeeded), and wait: per file not in S3 after, its path in
    the mount and why. ControlError with one line if the daemon cannot be asked."""
    failed = request(root, {"op": "publish-held"}, timeout).get("failed") or {}
    return {str(name): str(why) for name, why in failed.items()}


def request(root: Path, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Send ``message`` to the daemon of cache folder ``root`` and return its answer (blocking)."""
    path = socket_path(root)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            with _address(path) as address:
                conn.connect(address)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}: is the mount's daemon running?") from None
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise ControlError(f"the daemon does not answer at {path} (it stopped or died)") from None
            raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror}") from None
        try:
            conn.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise ControlError(f"the daemon did not answer within {timeout:g} s") from None
        except OSError as exc:  # (reset: it died with the request in its socket's queue)
            raise ControlError(f"the daemon at {path} dropped the request (it stopped or died): {exc.strerror}") from None
    try:
        answer = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        raise ControlError("the daemon closed the connection without an answer (did it stop?)") from None
    if not isinstance(answer, dict):
        raise ControlError("the daemon's answer is not understood")
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error") or "the daemon refused the request"))
    return answer

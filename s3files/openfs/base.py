"""open_fs's base: the trio thread that runs the core (``_Loop``), the path walk every operation starts
with (``Base``: names looked up one by one as the kernel walks them, each reference given back when the
call ends), and the errors as the mount's OSErrors. The operations are in files.py, tree.py, metadata.py.
Must not hold file-system logic (the core's) nor import pyfuse3.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import posixpath
import stat
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from s3files.cachefolder import cache_folder
from s3files.core.fs import ROOT_INO, Attr, FileSystem
from s3files.core.namespace import check_length
from s3files.core.recovery import OnRecovery
from s3files.errors import InvalidArgument, MountError, NotADirectory, NotFound, S3FilesError
from s3files.options import MountOptions
from s3files.status import StatusWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

START_TIMEOUT = 30.0  # seconds open_fs waits for the bucket check and the recovery of the cache folder
CHECK_TIMEOUT = 15.0  # seconds the bucket check may take (as a mount's)
STATUS_INTERVAL = 1.0  # seconds between looks at the status ``s3files status`` shows (as a mount's)
BLOCK_SIZE = 1024 * 1024  # the buffer of file objects: the st_blksize a mount reports, which open() uses
MAX_SYMLINKS = 40  # links followed in one path walk before ELOOP (Linux's limit)


class FileSystemClosed(ValueError):
    """An operation on an OpenFS (or one of its files) after close(), as on a closed Python file."""


def _umask() -> int:
    """The process's umask without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _parts(path: str | os.PathLike[str]) -> list[str]:
    """The names of ``path`` below the file system's root ('' and '/' are the root)."""
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"paths are str, got {type(text).__name__}")
    return [name for name in posixpath.normpath("/" + text).split("/") if name]


def _os_error(exc: BaseException, path: object) -> OSError:
    """The OSError a program would get from the same operation through a mount (fuse/adapter.guarded)."""
    if isinstance(exc, S3FilesError):
        code = exc.errno
    else:
        log.error("operation on %r failed unexpectedly; answering EIO", path, exc_info=exc)
        code = errno.EIO
    return OSError(code, os.strerror(code), os.fspath(path) if isinstance(path, (str, os.PathLike)) else path)


def stat_result(attr: Attr) -> os.stat_result:
    """``attr`` as os.stat returns it (the attributes a mount gives the kernel: fuse/adapter._entry)."""
    return os.stat_result(
        (
            attr.mode,
            attr.ino,
            0,
            attr.nlink,
            attr.uid,
            attr.gid,
            attr.size,
            attr.atime_ns // 1_000_000_000,
            attr.mtime_ns // 1_000_000_000,
            attr.ctime_ns // 1_000_000_000,
            attr.atime_ns / 1e9,
            attr.mtime_ns / 1e9,
            attr.ctime_ns / 1e9,
            attr.atime_ns,
            attr.mtime_ns,
            attr.ctime_ns,
            BLOCK_SIZE,
            (attr.size + 511) // 512,
            attr.rdev,
        )
    )


class _Loop:
    """One trio run on a daemon thread holding the file system: the store, the cache folder (locked),
    the FileSystem and its nursery for background work (read-ahead, uploads, the write-back)."""

    def __init__(self, opts: MountOptions, open_store: Callable[[], Any], timeout: float) -> None:
        self.opts = opts
        self._open_store = open_store
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.fs: FileSystem | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"s3files-open_fs:{opts.source}", daemon=True)
        self._thread.start()
        self._started.wait(timeout)
        if self.fs is None:
            self._thread.join(timeout)
            if self._error is not None:
                raise self._error
            raise MountError(f"open_fs of {opts.source} did not start within {timeout:.0f} s")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        async with self._open_store() as store:
            with trio.fail_after(CHECK_TIMEOUT):
                await store.check_bucket()
            with cache_folder(self.opts) as folder:
                async with trio.open_nursery() as nursery:
                    fs = FileSystem(store, self.opts, spawn=nursery.start_soon, staging=folder)
                    await fs.recover(OnRecovery(self.opts.on_recovery))
                    self._stop = trio.Event()
                    self._token = trio.lowlevel.current_trio_token()
                    self.fs = fs
                    self._started.set()
                    nursery.start_soon(self._keep_status, fs)
                    try:
                        await self._stop.wait()
                    finally:
                        with trio.CancelScope(shield=True):
                            await fs.aclose()
                        nursery.cancel_scope.cancel()

    async def _keep_status(self, fs: FileSystem) -> None:
        """``status.json`` in the cache folder, as a mount's daemon writes it (fuse/mount.py), so
        ``s3files status CACHE_FOLDER`` shows this process's files while it runs; removed at close."""
        writer = StatusWriter(fs.folder.root, None, str(self.opts.source))
        try:
            while True:
                writer.update(lambda: {**fs.status(), "front": "open_fs"})
                await trio.sleep(STATUS_INTERVAL)
        finally:
            writer.remove()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._token is None or not self._thread.is_alive():
            raise FileSystemClosed("I/O operation on a closed file system")
        try:
            return trio.from_thread.run(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise FileSystemClosed("I/O operation on a closed file system") from None

    def close(self, timeout: float) -> None:
        """Stop: what a close acknowledged is uploaded first (FileSystem.aclose), as at an unmount."""
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("open_fs of %s did not stop within %.0f s", self.opts.source, timeout)
        if isinstance(self._error, S3FilesError):
            raise self._error


_open_filesystems: weakref.WeakSet[Base] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """A program that ends without close(): upload what was acknowledged, as a stopped mount does (the
    trio thread is a daemon thread, still running while atexit handlers run)."""
    for opened in list(_open_filesystems):
        with contextlib.suppress(Exception):
            opened.close()


class Base:
    """The file system of ``s3://bucket/prefix/`` opened in this process (see ``open_fs``). Paths are
    relative to the prefix ('/'-separated; a leading '/' is the root). Thread-safe: calls from several
    threads run concurrently on the file system's trio thread."""

    def __init__(self, opts: MountOptions, open_store: Callable[[], Any], timeout: float = START_TIMEOUT) -> None:
        self.opts = opts
        self._umask = _umask()
        self._loop = _Loop(opts, open_store, timeout)
        self._fs: FileSystem = self._loop.fs  # type: ignore[assignment]
        self._closed = False
        _open_filesystems.add(self)

    def __repr__(self) -> str:
        return f"<s3files.OpenFS {self.opts.source} consistency={self.opts.consistency.value}>"

    def __enter__(self) -> Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Upload what a close acknowledged (eventual mode's write-back) and stop; a file still open for
        writing is not published but kept in the cache folder for the next open_fs or mount (as a
        stopped mount does). Idempotent."""
        if self._closed:
            return
        self._closed = True
        _open_filesystems.discard(self)
        self._loop.close(timeout=START_TIMEOUT * 10)

    @property
    def closed(self) -> bool:
        return self._closed

    def _call(self, path: object, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the trio thread; errors as the mount's OSErrors."""
        try:
            return self._loop.run(fn, *args)
        except (OSError, FileSystemClosed):
            raise
        except Exception as exc:
            raise _os_error(exc, path) from None

    # -- path walks, on the trio thread --------------------------------------------------------------------

    async def _walk(self, parts: list[str], held: list[int], follow: bool, depth: int = 0) -> Attr:
        """The attributes of ``parts`` (names from the root), looked up one by one as the kernel does;
        each inode looked up is appended to ``held`` (the caller forgets them). Symlinks on the way are
        followed (and the last one if ``follow``), relative to their folder; an absolute target leaves
        this file system: ENOENT."""
        fs = self._fs
        if not parts:
            return await fs.getattr(ROOT_INO)
        attr: Attr | None = None  # the root: a folder, never looked up (nor asked about) by the kernel
        for index, name in enumerate(parts):
            if attr is not None and not stat.S_ISDIR(attr.mode):
                raise NotADirectory(f"{'/'.join(parts[:index])} is not a folder")
            attr = await fs.lookup(attr.ino if attr is not None else ROOT_INO, name)
            held.append(attr.ino)
            last = index == len(parts) - 1
            if stat.S_ISLNK(attr.mode) and (follow or not last):
                if depth >= MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), "/".join(parts))
                target = (await fs.readlink(attr.ino)).decode("utf-8", "surrogateescape")
                if target.startswith("/"):
                    raise NotFound(f"{'/'.join(parts[: index + 1])} links outside the file system: {target}")
                rest = [*parts[:index], *target.split("/"), *parts[index + 1 :]]
                return await self._walk(_parts("/".join(rest)), held, follow, depth + 1)
        assert attr is not None
        return attr

    def _forget(self, held: list[int]) -> None:
        for ino in held:
            self._fs.forget(ino, 1)

    async def _parent(self, parts: list[str], held: list[int]) -> int:
        """The inode of the folder holding ``parts[-1]``."""
        if len(parts) == 1:
            return ROOT_INO
        parent = await self._walk(parts[:-1], held, follow=True)
        if not stat.S_ISDIR(parent.mode):
            raise NotADirectory(f"{'/'.join(parts[:-1])} is not a folder")
        return parent.ino

    def _new_name(self, name: str) -> str:
        check_length(name)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"names must be UTF-8 to be stored in S3: {name!r}") from None
        return name


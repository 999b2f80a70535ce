"""``open_fs``: the mount's file system as a Python API, without FUSE (for hosts with no /dev/fuse, such as
AWS Lambda, and for programs that would rather not mount).

Owns: running one core ``FileSystem`` (s3files/core/fs.py: the same caches, read-ahead, uploads,
conditional writes, consistency modes and crash-safe cache folder as a mount) on a trio run in a daemon
thread of the caller's process, and the synchronous front over it: paths walked name by name as the
kernel walks them (a lookup per component, each reference given back when the call ends, a file's when
it is closed), file objects (``RawFile`` under Python's own buffered and text layers, as ``open()``
builds them), listings, stat, and the kernel's part of each operation that the core leaves to it: close
is flush then release, an append writes at the file's size, open with O_CREAT looks the name up before it
creates. Errors are the core's ``S3FilesError`` raised as ``OSError`` with its errno (the one table, in
s3files/errors.py), as the FUSE adapter answers them; anything unexpected is EIO, as there.
Must not hold file-system logic (the core's) nor import pyfuse3.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import logging
import os
import posixpath
import stat
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from s3files.cachefolder import cache_folder
from s3files.core.fs import ROOT_INO, Attr, FileSystem
from s3files.core.namespace import check_length
from s3files.core.recovery import OnRecovery
from s3files.errors import (
    InvalidArgument,
    IsADirectory,
    MountError,
    NotADirectory,
    NotFound,
    S3FilesError,
)
from s3files.options import MountOptions, ReadOptions, Source, StoreOptions, default_cache_dir

log = logging.getLogger(__name__)

T = TypeVar("T")

START_TIMEOUT = 30.0  # seconds open_fs waits for the bucket check and the recovery of the cache folder
CHECK_TIMEOUT = 15.0  # seconds the bucket check may take (as a mount's)
BLOCK_SIZE = 1024 * 1024  # the buffer of file objects: the st_blksize a mount reports, which open() uses
REQUEST_SIZE = 1024 * 1024  # the largest read or write handed to the core at once (a mount's FUSE requests)
MAX_SYMLINKS = 40  # links followed in one path walk before ELOOP (Linux's limit)
STORE_FIELDS = ("endpoint_url", "region", "profile", "max_connections", "max_attempts", "request_timeout")


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
                    try:
                        await self._stop.wait()
                    finally:
                        with trio.CancelScope(shield=True):
                            await fs.aclose()
                        nursery.cancel_scope.cancel()

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


_open_filesystems: weakref.WeakSet[OpenFS] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """A program that ends without close(): upload what was acknowledged, as a stopped mount does (the
    trio thread is a daemon thread, still running while atexit handlers run)."""
    for opened in list(_open_filesystems):
        with contextlib.suppress(Exception):
            opened.close()


class OpenFS:
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

    def __enter__(self) -> OpenFS:
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

    # -- metadata ------------------------------------------------------------------------------------------

    def stat(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> os.stat_result:
        parts = _parts(path)

        async def attributes() -> Attr:
            held: list[int] = []
            try:
                attr = await self._walk(parts, held, follow_symlinks)
                if os.fspath(path).endswith("/") and parts and not stat.S_ISDIR(attr.mode):
                    raise NotADirectory(f"{'/'.join(parts)} is not a folder")
                return attr
            finally:
                self._forget(held)

        return stat_result(self._call(path, attributes))

    def lstat(self, path: str | os.PathLike[str]) -> os.stat_result:
        return self.stat(path, follow_symlinks=False)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return self._mode_is(path, lambda mode: True)

    def isdir(self, path: str | os.PathLike[str]) -> bool:
        return self._mode_is(path, stat.S_ISDIR)

    def isfile(self, path: str | os.PathLike[str]) -> bool:
        return self._mode_is(path, stat.S_ISREG)

    def islink(self, path: str | os.PathLike[str]) -> bool:
        return self._mode_is(path, stat.S_ISLNK, follow=False)

    def _mode_is(self, path: str | os.PathLike[str], test: Callable[[int], bool], follow: bool = True) -> bool:
        """``test`` of ``path``'s mode (``os.path.isdir`` and friends): False when there is no such name."""
        try:
            return bool(test((self.stat(path) if follow else self.lstat(path)).st_mode))
        except (FileNotFoundError, NotADirectoryError):
            return False

    def readlink(self, path: str | os.PathLike[str]) -> str:
        parts = _parts(path)

        async def target() -> bytes:
            held: list[int] = []
            try:
                attr = await self._walk(parts, held, follow=False)
                if not stat.S_ISLNK(attr.mode):
                    raise InvalidArgument(f"{'/'.join(parts)} is not a symbolic link")
                return await self._fs.readlink(attr.ino)
            finally:
                self._forget(held)

        return self._call(path, target).decode("utf-8", "surrogateescape")

    # -- listings ------------------------------------------------------------------------------------------

    def _entries(self, path: str | os.PathLike[str]) -> list[tuple[str, Attr]]:
        parts = _parts(path)

        async def entries() -> list[tuple[str, Attr]]:
            held: list[int] = []
            fs = self._fs
            try:
                attr = await self._walk(parts, held, follow=True)
                fh = await fs.opendir(attr.ino)
                try:
                    listed = await fs.readdir(fh, 0)
                finally:
                    fs.releasedir(fh)
                for _, entry, _ in listed:  # as readdirplus: the kernel takes a reference, forgets it later
                    fs.acquire(entry.ino)
                    held.append(entry.ino)
                return [(name, entry) for name, entry, _ in listed]
            finally:
                self._forget(held)

        return self._call(path, entries)

    def listdir(self, path: str | os.PathLike[str] = "") -> list[str]:
        return [name for name, _ in self._entries(path)]

    def scandir(self, path: str | os.PathLike[str] = "") -> Iterator[DirEntry]:
        """Entries as os.DirEntry gives them; their attributes come with the listing (no request each)."""
        base = os.fspath(path)
        for name, attr in self._entries(path):
            yield DirEntry(self, name, posixpath.join(base, name) if base else name, attr)

    def walk(
        self, top: str | os.PathLike[str] = "", topdown: bool = True
    ) -> Iterator[tuple[str, list[str], list[str]]]:
        """As os.walk (symlinked folders are not descended into, os.walk's default)."""
        top = os.fspath(top)
        try:
            entries = list(self.scandir(top))
        except OSError:
            return
        folders = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        files = [entry.name for entry in entries if not entry.is_dir(follow_symlinks=False)]
        if topdown:
            yield top, folders, files
        for name in folders:
            yield from self.walk(posixpath.join(top, name) if top else name, topdown)
        if not topdown:
            yield top, folders, files

    # -- changing the tree -----------------------------------------------------------------------------

    def mkdir(self, path: str | os.PathLike[str], mode: int = 0o777) -> None:
        parts = _parts(path)
        if not parts:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))

        async def make() -> None:
            held: list[int] = []
            try:
                parent = await self._parent(parts, held)
                name = self._new_name(parts[-1])
                made = await self._fs.mkdir(
                    parent, name, stat.S_IFDIR | (mode & ~self._umask & 0o7777), os.getuid(), os.getgid()
                )
                held.append(made.ino)  # mkdir's reply holds a reference, as a lookup's
            finally:
                self._forget(held)

        self._call(path, make)

    def makedirs(self, path: str | os.PathLike[str], mode: int = 0o777, exist_ok: bool = False) -> None:
        parts = _parts(path)
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            try:
                self.mkdir(sub, mode)
            except FileExistsError:
                if depth == len(parts) and not (exist_ok and self.isdir(sub)):
                    raise
                if depth < len(parts) and not self.isdir(sub):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), sub) from None

    def _on_parent(self, path: str | os.PathLike[str], op: Callable[[int, str], Awaitable[None]]) -> None:
        parts = _parts(path)
        if not parts:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), os.fspath(path))

        async def run() -> None:
            held: list[int] = []
            try:
                parent = await self._parent(parts, held)
                check_length(parts[-1])
                await op(parent, parts[-1])
            finally:
                self._forget(held)

        self._call(path, run)

    def remove(self, path: str | os.PathLike[str]) -> None:
        self._on_parent(path, self._fs.unlink)

    unlink = remove

    def rmdir(self, path: str | os.PathLike[str]) -> None:
        self._on_parent(path, self._fs.rmdir)

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        """As os.rename: ``dst`` is replaced if it exists (a file by a file, an empty folder by a folder)."""
        old, new = _parts(src), _parts(dst)
        if not old or not new:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), os.fspath(src), os.fspath(dst))

        async def move() -> None:
            held: list[int] = []
            try:
                old_parent = await self._parent(old, held)
                new_parent = await self._parent(new, held)
                check_length(old[-1])
                await self._fs.rename(old_parent, old[-1], new_parent, self._new_name(new[-1]), 0)
            finally:
                self._forget(held)

        try:
            self._loop.run(move)
        except (OSError, FileSystemClosed):
            raise
        except Exception as exc:
            error = _os_error(exc, src)
            raise OSError(error.errno, error.strerror, os.fspath(src), None, os.fspath(dst)) from None

    replace = rename

    def symlink(self, target: str, path: str | os.PathLike[str]) -> None:
        """As os.symlink(target, path); stored as s3fs-fuse stores links."""
        parts = _parts(path)

        async def link() -> None:
            held: list[int] = []
            try:
                parent = await self._parent(parts, held)
                made = await self._fs.symlink(
                    parent, self._new_name(parts[-1]), os.fsencode(target), os.getuid(), os.getgid()
                )
                held.append(made.ino)
            finally:
                self._forget(held)

        self._call(path, link)

    # -- files -----------------------------------------------------------------------------------------

    def open(
        self,
        path: str | os.PathLike[str],
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """As the built-in open(): a binary file (io.BufferedReader/Writer/Random over a ``RawFile``, or the
        RawFile itself with ``buffering=0``) or a text file (io.TextIOWrapper). Closing it is closing a
        file of the mount: close-to-open and strict return once it is in S3 (a failed or conflicting
        upload raises OSError there), eventual once it is durable in the cache folder."""
        flags, readable, writable, append, binary = _flags(mode)
        if binary and (encoding is not None or errors is not None or newline is not None):
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        if not binary and buffering == 0:
            raise ValueError("can't have unbuffered text I/O")
        raw = RawFile(self, path, flags, readable, writable, append, mode)
        try:
            if append:
                raw.seek(0, os.SEEK_END)
            line_buffering = buffering == 1 and not binary
            if buffering == 0:
                return raw
            size = BLOCK_SIZE if buffering in (-1, 1) else buffering
            buffer: io.BufferedIOBase
            if readable and writable:
                buffer = io.BufferedRandom(raw, size)
            elif writable:
                buffer = io.BufferedWriter(raw, size)
            else:
                buffer = io.BufferedReader(raw, size)
            if binary:
                return buffer
            text = io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline, line_buffering)
            text.mode = mode  # type: ignore[misc]
            return text
        except BaseException:
            raw.close()
            raise

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        with self.open(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str | os.PathLike[str], data: bytes) -> int:
        with self.open(path, "wb") as f:
            return f.write(data)

    # -- uploads and state -----------------------------------------------------------------------------

    def sync(self, path: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """Upload now what waits for its upload (eventual mode's write-back, a failed upload's retry), or
        what is at or below ``path``; returns once done: ``{}``, or path -> why for each file that is not
        in S3 (as ``s3files sync`` and ``s3files.sync``)."""
        below = "/".join(_parts(path)) if path is not None else None
        return self._call(path or "", self._fs.sync, below)

    def status(self) -> dict[str, object]:
        """What ``s3files status`` shows of a mount (FileSystem.status), plus where from and the cache
        folder: files not in S3 yet, files kept after a stop, conflict copies, the cache's use."""

        async def now() -> dict[str, object]:
            return {**self._fs.status(), "source": str(self.opts.source), "cache_folder": str(self._fs.folder.root)}

        return self._call("", now)

    def statistics(self) -> dict[str, object]:
        """The mount's statistics (S3 request counts, inodes, cache), as ``--stats-file`` writes them."""

        async def now() -> dict[str, object]:
            return self._fs.statistics()

        return self._call("", now)


def _flags(mode: str) -> tuple[int, bool, bool, bool, bool]:
    """open()'s mode as (flags, readable, writable, append, binary), validated as open() validates it."""
    kinds = set(mode)
    if len(kinds) != len(mode) or not kinds <= set("rwaxb+t") or len(kinds & set("rwax")) != 1:
        raise ValueError(f"invalid mode: {mode!r}")
    if "b" in kinds and "t" in kinds:
        raise ValueError("can't have text and binary mode at once")
    plus = "+" in kinds
    if "r" in kinds:
        flags = os.O_RDWR if plus else os.O_RDONLY
    else:
        flags = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT
        flags |= {"w": os.O_TRUNC, "a": os.O_APPEND, "x": os.O_EXCL}[next(iter(kinds & set("wax")))]
    readable = "r" in kinds or plus
    writable = "r" not in kinds or plus
    return flags, readable, writable, "a" in kinds, "b" in kinds


class RawFile(io.RawIOBase):
    """One open file of an OpenFS: a file handle of the core, read and written at this object's position
    (an append at the file's size). ``close`` is the kernel's close: flush (what a close commits: the
    upload, or eventual mode's acknowledgement; its error is raised here), then release."""

    def __init__(
        self,
        owner: OpenFS,
        path: str | os.PathLike[str],
        flags: int,
        readable: bool,
        writable: bool,
        append: bool,
        mode: str,
    ) -> None:
        super().__init__()
        self._owner = owner
        self._fs = owner._fs
        self.name = os.fspath(path)
        self.mode = mode
        self._readable, self._writable, self._append = readable, writable, append
        self._pos = 0
        self._fh: int | None = None  # None: the open failed, there is nothing to release
        self._fh, self._ino = owner._call(path, self._open, _parts(path), flags)

    async def _open(self, parts: list[str], flags: int) -> tuple[int, int]:
        owner, fs = self._owner, self._fs
        if not parts:
            raise IsADirectory("the root is a folder")
        held: list[int] = []
        try:
            parent = await owner._parent(parts, held)
            try:
                attr: Attr | None = await fs.lookup(parent, parts[-1])
            except NotFound:
                attr = None
            else:
                held.append(attr.ino)
                if stat.S_ISLNK(attr.mode):
                    attr = await owner._walk(parts, held, follow=True)
            if attr is None:
                if not flags & os.O_CREAT:
                    raise NotFound(f"{'/'.join(parts)} does not exist")
                name = owner._new_name(parts[-1])
                mode = stat.S_IFREG | (0o666 & ~owner._umask)
                opened = await fs.create(parent, name, mode, os.getuid(), os.getgid())
                return opened.fh, opened.attr.ino  # create's reference is the file's, until release
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), "/".join(parts))
            if stat.S_ISDIR(attr.mode):
                raise IsADirectory(f"{'/'.join(parts)} is a folder")
            opened = await fs.open(attr.ino, flags & ~(os.O_CREAT | os.O_EXCL))
            held.remove(attr.ino)  # the open file keeps this reference until release
            return opened.fh, attr.ino
        finally:
            owner._forget(held)

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("an open_fs file has no file descriptor (use a mount for that)")

    def _size(self) -> int:
        async def size() -> int:
            return (await self._fs.getattr(self._ino)).size

        return self._owner._call(self.name, size)

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        view = memoryview(buffer).cast("B")
        n = self._owner._call(self.name, self._read_into, view, self._pos)
        self._pos += n
        return n

    async def _read_into(self, view: memoryview, at: int) -> int:
        """Fill ``view`` from ``at`` in reads of at most REQUEST_SIZE, as the kernel splits a large read
        into FUSE requests; short at the end of the file."""
        done = 0
        while done < len(view):
            asked = min(REQUEST_SIZE, len(view) - done)
            data = await self._fs.read(self._fh, at + done, asked)
            view[done : done + len(data)] = data
            done += len(data)
            if len(data) < asked:
                break
        return done

    def readall(self) -> bytes:
        chunks = []
        while True:
            chunk = self.read(BLOCK_SIZE)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def write(self, data: Any) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        payload = memoryview(data).cast("B")
        at, n = self._owner._call(self.name, self._write, payload, self._pos)
        self._pos = at + n
        return n

    async def _write(self, payload: memoryview, at: int) -> tuple[int, int]:
        """Write ``payload`` at ``at`` (an append: at the file's size, as the kernel writes O_APPEND) in
        writes of at most REQUEST_SIZE, as the kernel's FUSE requests; (where, bytes written)."""
        if self._append:
            at = (await self._fs.getattr(self._ino)).size
        done = 0
        while done < len(payload):
            n = await self._fs.write(self._fh, at + done, bytes(payload[done : done + REQUEST_SIZE]))
            done += n
            if n == 0:
                break  # at the largest object size (a short write)
        return at, done

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if whence == os.SEEK_SET:
            where = offset
        elif whence == os.SEEK_CUR:
            where = self._pos + offset
        elif whence == os.SEEK_END:
            where = self._size() + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if where < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), self.name)
        self._pos = where
        return where

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        size = self._pos if size is None else size
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), self.name)

        async def resize() -> None:
            await self._fs.setattr(self._ino, size=size)

        self._owner._call(self.name, resize)
        return size

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            if self._fh is not None:
                self._owner._call(self.name, self._release, self._fh)

    async def _release(self, fh: int) -> None:
        try:
            await self._fs.flush(fh)
        finally:
            try:
                with trio.CancelScope(shield=True):
                    await self._fs.release(fh)
            finally:
                self._fs.forget(self._ino, 1)

    def __repr__(self) -> str:
        return f"<s3files.RawFile name={self.name!r} mode={self.mode!r}>"


class DirEntry:
    """An entry of ``OpenFS.scandir``, as os.DirEntry: its attributes came with the listing."""

    def __init__(self, owner: OpenFS, name: str, path: str, attr: Attr) -> None:
        self.name = name
        self.path = path
        self._owner = owner
        self._attr = attr

    def inode(self) -> int:
        return self._attr.ino

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self._attr.mode)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks and self.is_symlink():
            return self._owner.isdir(self.path)
        return stat.S_ISDIR(self._attr.mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks and self.is_symlink():
            return self._owner.isfile(self.path)
        return stat.S_ISREG(self._attr.mode)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if follow_symlinks and self.is_symlink():
            return self._owner.stat(self.path)
        return stat_result(self._attr)

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"<s3files.DirEntry {self.name!r}>"


def open_fs(
    source: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    consistency: str | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = START_TIMEOUT,
    **options: Any,
) -> OpenFS:
    """Open ``s3://bucket/prefix/`` as a file system of this process, without FUSE: the same core as
    ``s3files mount`` with the same options (``consistency``, ``metadata_ttl``, ``writeback_delay``,
    ``cache_dir``, ``cache_size``, ``read_only``, ``on_recovery``, ``upload_part_size``, ...; the
    MountOptions fields) and the same contract (docs/SEMANTICS.md, "open_fs"). ``cache_dir`` defaults to
    the mount's default; on AWS Lambda give a folder under /tmp. Raises MountError (or the store's error:
    BucketNotFound, CredentialsError, ...) if it cannot start. Use it as a context manager, or close()."""
    from s3files.store.s3 import open_s3_store

    store = StoreOptions(
        endpoint_url=endpoint_url,
        region=region,
        profile=profile,
        **{name: options.pop(name) for name in STORE_FIELDS if name in options},
    )
    if "mountpoint" in options or "direct_io" in options:
        raise TypeError("open_fs takes no mountpoint and no direct_io (it has no kernel page cache)")
    opts = MountOptions(
        source=Source.parse(source),
        mountpoint=Path("/"),  # used by a mount only (its status file names it); open_fs has none
        store=store,
        read=options.pop("read", ReadOptions()),
        # No kernel page cache: every handle reads the version it opened, as with --direct-io.
        direct_io=True,
        consistency=consistency if consistency is not None else MountOptions.consistency,  # type: ignore[arg-type]
        cache_dir=Path(cache_dir).absolute() if cache_dir is not None else default_cache_dir(),
        **options,
    )

    def open_store() -> Any:
        return open_s3_store(
            opts.source.bucket,
            endpoint_url=store.endpoint_url,
            region=store.region,
            profile=store.profile,
            max_connections=store.max_connections,
            max_attempts=store.max_attempts,
            request_timeout=store.request_timeout,
        )

    return OpenFS(opts, open_store, timeout)

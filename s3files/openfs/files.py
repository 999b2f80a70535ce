"""open_fs's files: ``open`` as the built-in open() builds a file object (Python's buffered and text layers
over ``RawFile``, one file handle of the core read and written at its own position) and the kernel's part
of it: close is flush then release, an append writes at the file's size, O_CREAT looks the name up before
it creates, reads and writes go in requests of at most ``REQUEST_SIZE`` as the kernel splits them.
Must not hold file-system logic (the core's) nor import pyfuse3.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import Any

import trio

from s3files.core.fs import Attr
from s3files.errors import IsADirectory, NotFound
from s3files.openfs.base import BLOCK_SIZE, Base, _parts

REQUEST_SIZE = 1024 * 1024  # the largest read or write handed to the core at once (a mount's FUSE requests)


class Files(Base):
    """The file operations of an OpenFS (a part of it: __init__.py)."""

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
        owner: Base,
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

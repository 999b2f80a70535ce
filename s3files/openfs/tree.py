"""open_fs's listings and changes of the tree: listdir, scandir (``DirEntry``), walk, mkdir, makedirs,
remove, rmdir, rename, symlink, each one core call per name as a mount's kernel makes them.
Must not hold file-system logic (the core's) nor import pyfuse3.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from s3files.core.fs import Attr
from s3files.core.namespace import check_length
from s3files.openfs.base import Base, FileSystemClosed, _os_error, _parts, stat_result

if TYPE_CHECKING:
    from s3files.openfs import OpenFS


class Tree(Base):
    """The listing and tree operations of an OpenFS (a part of it: __init__.py)."""

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
            yield DirEntry(self, name, posixpath.join(base, name) if base else name, attr)  # type: ignore[arg-type]

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


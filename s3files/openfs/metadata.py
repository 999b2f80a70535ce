"""open_fs's metadata: stat and the like, readlink, chmod, chown, utime, the extended attributes (``user.``
only, stored in ``x-amz-meta-xattr`` as through a mount: core/xattrs.py), and the file system's state
(sync, status, statistics). Each is the core call a mount's kernel makes (setattr, getxattr, ...), with
the errnos of s3files/errors.py.

What the kernel decides on a mount and is decided here instead, as Linux does: who may change attributes
(chmod and an explicit utime: the owner or root, else EPERM; utime to now: also anyone the mode lets
write, else EACCES; chown: root, or the owner changing the group to one of its own groups, else EPERM),
the bits a change clears (chmod by someone not in the file's group drops set-group-ID; chown of a file
that is not a folder drops set-user-ID, and set-group-ID with group execute), and XATTR_CREATE /
XATTR_REPLACE (a getxattr first, as pyfuse3 does: EEXIST / ENODATA). As everywhere in open_fs, mode bits
are not checked otherwise (docs/SEMANTICS.md, open_fs).
Must not hold file-system logic (the core's) nor import pyfuse3.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from s3files.core.files import privs_to_clear
from s3files.core.fs import Attr
from s3files.errors import InvalidArgument, NoAttribute, NotADirectory, NotPermitted, NotSupported
from s3files.openfs.base import Base, _parts, stat_result

T = TypeVar("T")

XATTR_CREATE = getattr(os, "XATTR_CREATE", 1)
XATTR_REPLACE = getattr(os, "XATTR_REPLACE", 2)

Pathish = str | os.PathLike[str]


def _groups() -> set[int]:
    return {os.getegid(), *os.getgroups()}


def _owner_or_root(attr: Attr, what: str) -> None:
    if os.geteuid() not in (0, attr.uid):
        raise NotPermitted(f"{what}: only the owner (uid {attr.uid}) or root may")


def _may_write(attr: Attr) -> bool:
    uid = os.geteuid()
    if uid == 0:
        return True
    if uid == attr.uid:
        return bool(attr.mode & stat.S_IWUSR)
    if attr.gid in _groups():
        return bool(attr.mode & stat.S_IWGRP)
    return bool(attr.mode & stat.S_IWOTH)


class Metadata(Base):
    """The metadata operations of an OpenFS (a part of it: __init__.py)."""

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


    # -- changing attributes ---------------------------------------------------------------------------

    def _on_inode(self, path: Pathish, follow: bool, op: Callable[[Attr], Awaitable[T]]) -> T:
        """``op(attributes of path)`` on the trio thread, the walk's references given back after."""
        parts = _parts(path)

        async def run() -> T:
            held: list[int] = []
            try:
                return await op(await self._walk(parts, held, follow))
            finally:
                self._forget(held)

        return self._call(path, run)

    def chmod(self, path: Pathish, mode: int, *, follow_symlinks: bool = True) -> None:
        """As os.chmod: the permission bits (and set-user-ID, set-group-ID, sticky) of ``path``."""

        async def change(attr: Attr) -> None:
            if stat.S_ISLNK(attr.mode):
                raise NotSupported(f"{os.fspath(path)}: a symbolic link has no mode of its own")
            _owner_or_root(attr, f"chmod {os.fspath(path)}")
            bits = stat.S_IMODE(mode)
            if os.geteuid() != 0 and attr.gid not in _groups():
                bits &= ~stat.S_ISGID  # as Linux: set-group-ID only for a member of the file's group
            await self._fs.setattr(attr.ino, mode=bits)

        self._on_inode(path, follow_symlinks, change)

    def chown(self, path: Pathish, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """As os.chown (-1 leaves that id as it is)."""

        async def change(attr: Attr) -> None:
            new_uid = None if uid == -1 or uid == attr.uid else uid
            new_gid = None if gid == -1 or gid == attr.gid else gid
            if os.geteuid() != 0:
                _owner_or_root(attr, f"chown {os.fspath(path)}")
                if new_uid is not None:
                    raise NotPermitted(f"chown {os.fspath(path)}: only root may give a file away")
                if new_gid is not None and new_gid not in _groups():
                    raise NotPermitted(f"chown {os.fspath(path)}: not a member of group {new_gid}")
            mode = None
            if (uid != -1 or gid != -1) and not stat.S_ISDIR(attr.mode) and not stat.S_ISLNK(attr.mode):
                kill = privs_to_clear(attr.mode)  # as Linux's chown: also by root
                mode = stat.S_IMODE(attr.mode) & ~kill if kill else None
            if (new_uid, new_gid, mode) != (None, None, None):
                await self._fs.setattr(attr.ino, uid=new_uid, gid=new_gid, mode=mode)

        self._on_inode(path, follow_symlinks, change)

    def lchown(self, path: Pathish, uid: int, gid: int) -> None:
        self.chown(path, uid, gid, follow_symlinks=False)

    def utime(
        self,
        path: Pathish,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        """As os.utime: (atime, mtime) in seconds, or in nanoseconds with ``ns``; neither: now."""
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is not None:
            atime_ns, mtime_ns = (round(t * 1e9) for t in times)
        elif ns is not None:
            atime_ns, mtime_ns = (int(t) for t in ns)
        else:
            atime_ns = mtime_ns = time.time_ns()

        async def change(attr: Attr) -> None:
            if times is None and ns is None:
                if os.geteuid() not in (0, attr.uid) and not _may_write(attr):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            else:
                _owner_or_root(attr, f"utime {os.fspath(path)}")
            await self._fs.setattr(attr.ino, atime_ns=atime_ns, mtime_ns=mtime_ns)

        self._on_inode(path, follow_symlinks, change)

    # -- extended attributes (core/xattrs.py: user.* only, s3fs-fuse's encoding) ----------------------

    def getxattr(self, path: Pathish, attribute: str | bytes, *, follow_symlinks: bool = True) -> bytes:
        """As os.getxattr: ENODATA if absent (and for names outside ``user.``, which are never stored)."""
        name = os.fsencode(attribute)

        async def get(attr: Attr) -> bytes:
            return await self._fs.getxattr(attr.ino, name)

        return self._on_inode(path, follow_symlinks, get)

    def listxattr(self, path: Pathish = "", *, follow_symlinks: bool = True) -> list[str]:
        """As os.listxattr: the names of ``path``'s extended attributes."""

        async def names(attr: Attr) -> list[bytes]:
            return await self._fs.listxattr(attr.ino)

        return [os.fsdecode(name) for name in self._on_inode(path, follow_symlinks, names)]

    def setxattr(
        self, path: Pathish, attribute: str | bytes, value: bytes, flags: int = 0, *, follow_symlinks: bool = True
    ) -> None:
        """As os.setxattr; ``flags`` XATTR_CREATE (EEXIST if it exists) or XATTR_REPLACE (ENODATA if not)."""
        name = os.fsencode(attribute)
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), os.fspath(path))

        async def put(attr: Attr) -> None:
            if flags:
                try:
                    await self._fs.getxattr(attr.ino, name)
                except NoAttribute:
                    if flags & XATTR_REPLACE:
                        raise
                else:
                    if flags & XATTR_CREATE:
                        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path)) from None
            await self._fs.setxattr(attr.ino, name, bytes(value))

        self._on_inode(path, follow_symlinks, put)

    def removexattr(self, path: Pathish, attribute: str | bytes, *, follow_symlinks: bool = True) -> None:
        """As os.removexattr: ENODATA if absent."""
        name = os.fsencode(attribute)
        if not name:
            raise InvalidArgument("an extended attribute needs a name")

        async def remove(attr: Attr) -> None:
            await self._fs.removexattr(attr.ino, name)

        self._on_inode(path, follow_symlinks, remove)

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
        """The mount's statistics (S3 request counts, inodes, cache), as ``s3files stats --json`` shows a mount's."""

        async def now() -> dict[str, object]:
            return self._fs.statistics()

        return self._call("", now)


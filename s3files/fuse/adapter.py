"""The thin pyfuse3 Operations adapter: FUSE types in, core calls, errno out.

Owns: converting between pyfuse3's types (bytes names, EntryAttributes, FileInfo) and the core's, and the
guarantee that no handler raises anything but FUSEError. A handler that raised anything else would stop
pyfuse3's main loop and so unmount the file system: ``guarded`` turns S3FilesError into its errno (the
table lives in s3files.errors) and anything unexpected into a logged traceback and EIO.
Must not hold file-system logic: if a branch here needs a test of its own, it belongs in the core.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from s3files.core.fs import Attr, FileSystem, OpenFile
from s3files.core.namespace import check_length
from s3files.errors import InvalidArgument, NotFound, NotPermitted, S3FilesError
from s3files.metrics import Metrics

log = logging.getLogger(__name__)

CAP_FSETID = 4  # linux/capability.h

# Answers that are part of normal work, logged at debug: a missing name, a read-only mount, a missing
# extended attribute (the kernel asks for security.capability before every write), extended attributes
# turned off (--no-xattrs: the kernel stops asking).
QUIET = frozenset((errno.ENOENT, errno.EROFS, errno.ENODATA, errno.ENOSYS))

P = ParamSpec("P")
T = TypeVar("T")


def _target_of(handler: Callable[..., Any]) -> Callable[[FileSystem, tuple[Any, ...]], tuple[str, str] | None]:
    """How to name what a handler's call is about, from its first parameter: a name in a folder
    (``parent_inode, name``; rename's old name), an inode, or a handle; for its failure's log line."""
    first = next(iter(list(inspect.signature(handler).parameters)[1:]), "")
    if first in ("parent_inode", "p_old"):
        return lambda fs, args: fs.where(parent=args[0], name=os.fsdecode(args[1])) if len(args) > 1 else None
    if first == "inode":
        return lambda fs, args: fs.where(ino=args[0]) if args else None
    if first == "fh":
        return lambda fs, args: fs.where(fh=args[0]) if args else None
    return lambda fs, args: None


def failure_line(op: str, outcome: str, exc: S3FilesError, target: tuple[str, str] | None) -> str:
    """A failed operation's one line: ``op=write path='/a/b' key='prefix/a/b' errno=EACCES
    s3=AccessDenied: <the error>`` (path and key as repr, so no name can break the line; the key is the
    failed S3 request's when the error names one; ``s3`` only when S3 answered with an error code)."""
    path, key = target if target is not None else (None, None)
    key = exc.key if exc.key is not None else key
    fields = [f"op={op}"]
    if path is not None:
        fields.append(f"path={path!r}")
    if key is not None:
        fields.append(f"key={key!r}")
    fields.append(f"errno={outcome}")
    if exc.s3_code:
        fields.append(f"s3={exc.s3_code}")
    return f"{' '.join(fields)}: {exc}"


def guarded(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Wrap a handler so it raises only FUSEError; log by outcome (ENOENT is debug, EIO a warning), one
    line per failed operation (``failure_line``); count it with its outcome and latency in the mount's
    metrics (s3files/metrics.py)."""
    op = handler.__name__
    target_of = _target_of(handler)

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        metrics: Metrics | None = getattr(args[0], "metrics", None)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError as exc:
            outcome = errno.errorcode.get(exc.errno, str(exc.errno))
            raise
        except S3FilesError as exc:
            outcome = errno.errorcode.get(exc.errno, str(exc.errno))
            level = logging.DEBUG if exc.errno in QUIET or exc.quiet else logging.WARNING
            if log.isEnabledFor(level):
                fs: FileSystem | None = getattr(args[0], "fs", None)
                target = target_of(fs, args[1:]) if fs is not None else None
                log.log(level, "%s", failure_line(op, outcome, exc, target))
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            outcome = "EIO"
            log.exception("op=%s failed unexpectedly; answering EIO", op)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if metrics is not None:
                metrics.operation(op, outcome, time.perf_counter() - started)

    return wrapper


def _file_info(opened: OpenFile) -> Any:
    return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)


def _new_name(raw: bytes) -> str:
    """A name to create: it becomes part of an S3 key, which must be UTF-8."""
    check_length(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"names must be UTF-8 to be stored in S3: {raw!r}") from None


def _name(raw: bytes) -> str:
    """S3 keys are UTF-8 text: a name that is not UTF-8 cannot exist in the bucket (but one too long for
    any file system is ENAMETOOLONG first, as for a UTF-8 name)."""
    check_length(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotFound(f"not a UTF-8 name: {raw!r}") from None


def _has_fsetid(pid: int, uid: int) -> bool:
    """Whether process ``pid`` (a FUSE request's sender) holds CAP_FSETID, so its writes keep SUID/SGID bits
    (see files.privs_to_clear). pyfuse3 passes no write flags and no context to ``write``, so this is asked
    at open, from /proc; a process that is gone by then counts as root if ``uid`` is 0."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_FSETID & 1)
    except (OSError, ValueError, IndexError):
        pass
    return uid == 0


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers over a core FileSystem. The kernel may cache a name and its attributes for as long
    as the core still trusts them (``FileSystem.valid_for``: at most the mode's ``metadata_ttl``, 0 in
    strict mode, so the kernel asks at every use and caches no negative answer either)."""

    supports_dot_lookup = False
    # The kernel's writeback cache would batch writes into 1 MiB requests (this kernel otherwise sends
    # unaligned user writes a page at a time), but with it the kernel never takes a file's size from us
    # again, so a file grown or shrunk by another writer would read truncated or padded. Consistency wins.
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.metrics = metrics

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attr.ino
        entry.generation = 0
        entry.entry_timeout = entry.attr_timeout = self.fs.valid_for(attr.ino)
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = 1024 * 1024  # a hint to programs to read in big chunks
        entry.st_blocks = (attr.size + 511) // 512
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        entry.st_atime_ns = attr.atime_ns
        return entry

    # -- reading the tree --------------------------------------------------------------------------

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> Any:
        return self._entry(await self.fs.lookup(parent_inode, _name(name)))

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Any:
        return self._entry(await self.fs.getattr(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # forget has no reply: it must never raise.
        for inode, nlookup in inode_list:
            try:
                self.fs.forget(inode, nlookup)
            except Exception:
                log.exception("op=forget ino=%d failed", inode)

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> Any:
        return await self.fs.opendir(inode)

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for name, attr, next_id in await self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name.encode("utf-8"), self._entry(attr), next_id):
                break
            self.fs.acquire(attr.ino)  # readdirplus: the kernel now holds a reference

    @guarded
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> Any:
        writes = bool(flags & (os.O_WRONLY | os.O_RDWR))
        opened = await self.fs.open(inode, flags, clears_privs=writes and not _has_fsetid(ctx.pid, ctx.uid))
        return _file_info(opened)

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        return await self.fs.read(fh, off, size)

    @guarded
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> Any:
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        # S3 has no capacity: report a large, constant size so tools that check free space proceed.
        st.f_blocks = st.f_bfree = st.f_bavail = 2**40
        st.f_files = st.f_ffree = st.f_favail = 2**32
        st.f_namemax = 255
        return st

    # -- changing the tree --------------------------------------------------------------------------

    @guarded
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        clears = not _has_fsetid(ctx.pid, ctx.uid)
        opened = await self.fs.create(
            parent_inode, _new_name(name), mode, ctx.uid, ctx.gid, clears_privs=clears
        )
        return _file_info(opened), self._entry(opened.attr)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @guarded
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @guarded
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        return self._entry(
            await self.fs.setattr(
                inode,
                size=attr.st_size if fields.update_size else None,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
            )
        )

    @guarded
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        return self._entry(await self.fs.mkdir(parent_inode, _new_name(name), mode, ctx.uid, ctx.gid))

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.unlink(parent_inode, _name(name))

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.rmdir(parent_inode, _name(name))

    @guarded
    async def rename(self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any) -> None:
        await self.fs.rename(p_old, _name(n_old), p_new, _new_name(n_new), flags)

    @guarded
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        return self._entry(await self.fs.mknod(parent_inode, _new_name(name), mode, rdev, ctx.uid, ctx.gid))

    @guarded
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        attr = await self.fs.symlink(parent_inode, _new_name(name), target, ctx.uid, ctx.gid)
        return self._entry(attr)

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.readlink(inode)

    @guarded
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self.fs.check_writable("link")
        raise NotPermitted("hard links cannot be stored in S3")

    # -- extended attributes (s3files/core/xattrs.py); pyfuse3 answers size queries and ERANGE itself,
    # and turns XATTR_CREATE/XATTR_REPLACE into a getxattr first (EEXIST/ENODATA) --------------------------

    @guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.getxattr(inode, name)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self.fs.listxattr(inode)

    @guarded
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.setxattr(inode, name, value)

    @guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, name)

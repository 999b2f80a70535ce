"""The file system: POSIX operations composed from the superblock, handles, local cache and uploader.

Owns: what each operation asks of the rooms, in which order, and when a local copy is published: at
close and fsync (close-to-open), at a stop (only what a close or fsync acknowledged), and by recovery.
Returns plain dataclasses (``Attr``, ``OpenFile``) or raises ``S3FilesError``; knows nothing of FUSE, so it
is tested directly against the in-memory store, and through a real mount against S3 servers. Sets no
other room's state: it asks (superblock.py: names and attributes; handles.py: open files; cache.py:
local copies; uploader.py: publishing; writestate.py: the states a copy moves through).

Request budget (asserted by tests; listings and lookups: see superblock.py):
- ``open``: one HEAD (close-to-open: every open sees the newest version), or for a cold read one GET of
  the first part; reads then pin its ETag.
- ``symlink``: 3 requests (one-part multipart upload, If-None-Match); ``readlink``: one GET per version.
- ``rename`` of a folder of N keys: ceil(N/1000) LIST, N copies, N deletes (see trees.py).
"""

from __future__ import annotations

import logging
import os
import resource
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from s3files.core.cache import LocalCache, LocalCopy, clean_files_for
from s3files.core.handles import DirHandle, FileHandle, Handles
from s3files.core.inodes import ROOT_INO, Attr, Inode
from s3files.core.links import LINK_MAX, copy_object, link_metadata, put_link
from s3files.core.namespace import Entry, join, valid_name
from s3files.core.parts import PartLayout
from s3files.core.reader import PartBuffers, Reader, Spawn
from s3files.core.records import CacheFolder
from s3files.core.recovery import OnRecovery, RecoveryReport, recover
from s3files.core.trees import move_tree
from s3files.core.uploader import Uploader, WriteConflict, posix_metadata
from s3files.core.writestate import WriteState
from s3files.errors import (
    BadHandle,
    FileExists,
    InvalidArgument,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    PreconditionFailed,
    ReadOnly,
    S3FilesError,
)
from s3files.options import MountOptions
from s3files.store.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

UNMOUNT_UPLOAD_TIMEOUT = 300  # seconds a stop waits for acknowledged files before keeping them on disk
RENAME_NOREPLACE = 1  # linux/fs.h renameat2 flags
RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class OpenFile:
    fh: int
    keep_cache: bool  # the kernel may keep its cached pages: the object is the version it cached
    attr: Attr
    direct_io: bool = False  # the kernel's page cache is bypassed for this open (--direct-io)


class FileSystem:
    """One mount's file system over ``store``. ``spawn`` starts background work on the mount's nursery;
    ``staging`` is the mount's cache folder (records.py), locked while this object lives (a Path: opened
    and closed here; a CacheFolder: by the caller)."""

    def __init__(
        self,
        store: ObjectStore,
        opts: MountOptions,
        spawn: Spawn,
        staging: Path | CacheFolder,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.opts = opts
        self._wall = wall
        self._spawn = spawn
        if isinstance(staging, CacheFolder):
            self.folder = staging  # opened (and closed) by the caller
        else:
            self.folder = CacheFolder(staging)
            self.folder.open()
        self.cache = LocalCache(
            store,
            self.folder,
            self._describe,
            spawn,
            PartLayout(opts.upload_part_size),
            trio.Semaphore(max(1, opts.upload_concurrency)),
            limit=opts.cache_size,
            max_clean_files=clean_files_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        )
        self.sb = Superblock(store, opts, self._is_local, now, wall)
        self.uploader = Uploader(store, self.cache, spawn, self._key_of, self._published_later, wall)
        self.handles = Handles()
        self._part_buffers = PartBuffers(opts.read.part_size, opts.read.max_window + opts.read.part_size, spawn)
        self.recovery = RecoveryReport()

    @property
    def ns(self):  # type: ignore[no-untyped-def]
        return self.sb.ns

    @property
    def inodes(self):  # type: ignore[no-untyped-def]
        return self.sb.inodes

    def _is_local(self, ino: int) -> bool:
        copy = self.cache.get(ino)
        return copy is not None and copy.state is not WriteState.ORPHANED

    def _key_of(self, copy: LocalCopy) -> str:
        return self.sb.ns.file_key(copy.node.path)

    def _describe(self, copy: LocalCopy) -> tuple[str, dict[str, str]]:
        return self._key_of(copy), posix_metadata(copy.node, copy.mtime_set)

    # -- metadata operations -------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Attr:
        """Find ``name`` in folder ``parent_ino``; the kernel then holds one more reference to it."""
        parent = self.sb.node(parent_ino)
        if not parent.is_dir:
            raise NotADirectory(f"{parent.path} is not a folder")
        if not valid_name(name):
            raise NotFound(f"not a valid name: {name!r}")
        node = self.sb.record(join(parent.path, name), await self.sb.entry(parent.path, name))
        self.sb.inodes.acquire(node.ino)
        return node.attr()

    async def getattr(self, ino: int) -> Attr:
        node = self.sb.node(ino)
        if self.sb.is_fresh(node):
            return node.attr()
        return (await self.sb.head(node)).attr()

    def forget(self, ino: int, n: int) -> None:
        self.sb.inodes.forget(ino, n, pinned=self.cache.get(ino) is not None)

    def acquire(self, ino: int) -> None:
        self.sb.inodes.acquire(ino)

    # -- folders -----------------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        node = self.sb.node(ino)
        if not node.is_dir:
            raise NotADirectory(f"{node.path} is not a folder")
        return self.handles.open_dir(DirHandle(ino, node.path))

    async def readdir(self, fh: int, start: int) -> list[tuple[str, Attr, int]]:
        """Entries from position ``start`` as (name, attributes, next position).

        The listing is taken at ``start == 0`` and kept for the handle, so positions stay stable while
        the kernel pages through it. Files with a local copy are listed from it (also before their
        first upload, or while a failed one is retried). The caller calls ``acquire`` for each entry
        the kernel accepted.
        """
        handle = self.handles.folder(fh)
        if start == 0 or handle.entries is None:
            listing = await self.sb.listing(handle.path)
            assert listing is not None  # every page was asked for
            entries: dict[str, Entry | Inode] = dict(listing)
            for copy in self.cache.live():
                parent, _, name = copy.node.path.rpartition("/")
                if parent == handle.path and self._is_local(copy.node.ino) and self.sb.linked(copy.node):
                    entries[name] = copy.node
            handle.entries = sorted(entries.items())
        result = []
        for index in range(start, len(handle.entries)):
            name, entry = handle.entries[index]
            if isinstance(entry, Inode):
                node = entry
            else:
                try:
                    node = self.sb.record(join(handle.path, name), entry)
                except NotFound:
                    continue
            result.append((name, node.attr(), index + 1))
        return result

    def releasedir(self, fh: int) -> None:
        self.handles.close_dir(fh)

    # -- symlinks ----------------------------------------------------------------------------------

    async def symlink(self, parent_ino: int, name: str, target: bytes, uid: int, gid: int) -> Attr:
        """Create symlink ``name`` -> ``target`` (links.py: a one-part multipart upload, If-None-Match, so
        an existing key is EEXIST). Acquires the inode."""
        parent = self.sb.node(parent_ino)
        path = self._new_path(parent, name, "symlink")
        if not 0 < len(target) < LINK_MAX:
            raise InvalidName(f"a symlink target must be 1 to {LINK_MAX - 1} bytes")
        local = self.sb.inodes.by_path(path)
        if (local is not None and self._is_local(local.ino)) or self.sb.cached_entry(parent.path, name):
            raise FileExists(f"{path} exists")
        metadata = link_metadata(uid, gid, self._wall())
        try:
            info = await put_link(self.store, self.sb.ns.file_key(path), target, metadata, if_none_match=True)
        except PreconditionFailed:
            raise FileExists(f"{path} exists") from None
        node = self.sb.inodes.put_file(path, info, self.sb.fresh_until())
        node.target, node.target_etag = target, info.etag
        self.sb.forget_listings(parent.path)
        self.sb.inodes.acquire(node.ino)
        return node.attr()

    async def readlink(self, ino: int) -> bytes:
        """The target of symlink ``ino``: one GET per version (ETag), then from the inode."""
        node = self.sb.node(ino)
        if not stat.S_ISLNK(node.mode):
            raise InvalidArgument(f"{node.path} is not a symlink")
        for _ in range(2):  # a second time only after a HEAD found a newer version
            if node.target is not None and node.target_etag == node.etag:
                return node.target
            etag = node.etag
            try:
                key = self.sb.ns.file_key(node.path)
                body = await self.store.get_range(key, 0, node.size, if_match=etag) if node.size else b""
            except PreconditionFailed:
                await self.sb.head(node)  # changed since we looked: learn the new version (or its new kind)
                continue
            except NotFound:
                raise NotFound(f"{node.path} was removed from the bucket") from None
            node.target, node.target_etag = bytes(body), etag
            return node.target
        raise PreconditionFailed(f"{node.path} keeps changing; try again")

    # -- files -------------------------------------------------------------------------------------

    def check_writable(self, what: str) -> None:
        """Every changing operation goes through here: a --read-only mount refuses with EROFS."""
        if self.opts.read_only:
            raise ReadOnly(f"{what}: the mount is read-only")

    async def open(self, ino: int, flags: int) -> OpenFile:
        node = self.sb.node(ino)
        if node.is_dir:
            raise IsADirectory(f"{node.path} is a folder")
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        truncate = bool(flags & os.O_TRUNC)
        if writable or truncate:
            self.check_writable(f"open {node.path} for writing")
        copy = self.cache.get(ino)
        first: bytes | bytearray | None = None
        if copy is None:
            if not self.sb.linked(node):
                raise NotFound(f"{node.path} was removed")  # never ask S3 by a name this inode lost
            if not writable and self._cold_to_read(node):
                node, first = await self.sb.get_first(node, self.opts.read.first_part)
            else:
                node = await self.sb.head(node)  # close-to-open: every open sees the newest version
            copy = self.cache.get(ino)  # another open may have made the copy while we asked S3
            if copy is None and writable:
                copy = await self._stage(node, truncate)
                truncate = False
            if copy is not None:
                first = None
        if copy is not None and truncate:
            await self._truncate(node, copy, 0)
        keep_cache = copy is None and self._kernel_caches(node)
        if copy is None:
            node.page_cache_etag = node.etag
        else:
            copy.handles += 1  # readers too: they read the local copy, which must outlive them
            node.page_cache_etag = None
        reader = self._reader(node, first if not keep_cache else None)
        fh = self.handles.open_file(FileHandle(node, reader, writable, node.etag, counted=copy is not None))
        return OpenFile(fh, keep_cache, node.attr(), self.opts.direct_io)

    def _cold_to_read(self, node: Inode) -> bool:
        """Open with one GET of the file's first part instead of a HEAD: it was not empty when last seen,
        and neither the kernel's page cache nor a clean local copy is likely to hold its bytes already.
        The price, for a program that opens a large file only to read elsewhere (a Parquet footer), is up
        to ``first_part`` bytes fetched in vain within the same round trip."""
        return node.size > 0 and not self._kernel_caches(node) and not self.cache.holds_clean(node.ino)

    def _kernel_caches(self, node: Inode) -> bool:
        """The kernel's page cache may hold this version's bytes: it cached them at an earlier open (never
        with --direct-io, where no open uses the page cache)."""
        return not self.opts.direct_io and node.page_cache_etag == node.etag

    def _reader(self, node: Inode, first: bytes | bytearray | None = None) -> Reader:
        key = self.sb.ns.file_key(node.path)
        return Reader(self.store, key, node.size, node.etag, self.opts.read, self._spawn, first, self._part_buffers)

    async def _stage(self, node: Inode, truncate: bool) -> LocalCopy:
        """Make the local copy of ``node`` that writes go to (its parts are fetched when first needed)."""
        copy = self.cache.take_clean(node)  # the copy we uploaded last, if still this version
        if copy is None:
            copy = self.cache.create(node, node.etag, node.size, truncate)
        elif truncate:
            await self.cache.truncate(copy, 0)
        node.size = copy.size()
        return copy

    async def _truncate(self, node: Inode, copy: LocalCopy, size: int) -> None:
        await self.cache.truncate(copy, size)
        node.size = size
        node.mtime = self._wall()

    async def create(self, parent_ino: int, name: str, mode: int, uid: int, gid: int, flags: int = 0) -> OpenFile:
        """Create and open a new file; it exists in S3 once closed (or fsynced). Acquires the inode.

        A name another process of this mount created a moment ago (its file not closed yet) is opened
        instead, as O_CREAT does on any file system (EEXIST with O_EXCL)."""
        parent = self.sb.node(parent_ino)
        path = self._new_path(parent, name, "create")
        existing = self.sb.inodes.by_path(path)
        if existing is not None and self._is_local(existing.ino):
            if flags & os.O_EXCL:
                raise FileExists(f"{path} exists")
            opened = await self.open(existing.ino, flags | (os.O_RDWR if not flags & os.O_WRONLY else 0))
            self.sb.inodes.acquire(existing.ino)
            return opened
        node = self.sb.inodes.put_local_file(path, mode, uid, gid, self._wall())
        copy = self.cache.create(node, None, 0, truncate=True)
        copy.handles = 1
        self.sb.inodes.acquire(node.ino)
        fh = self.handles.open_file(FileHandle(node, self._reader(node), True, counted=True))
        return OpenFile(fh, False, node.attr(), self.opts.direct_io)

    def _new_path(self, parent: Inode, name: str, what: str) -> str:
        self.check_writable(f"{what} {name}")
        if not parent.is_dir:
            raise NotADirectory(f"{parent.path} is not a folder")
        if len(name.encode("utf-8", "surrogatepass")) > 255:
            raise InvalidName(f"name too long: {name[:40]}...")
        if not valid_name(name):
            raise InvalidArgument(f"not a valid name: {name!r}")
        return join(parent.path, name)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self.handles.file(fh)
        copy = self.cache.get(handle.ino)
        if copy is not None:
            return await self.cache.read(copy, self._key_of(copy), off, size)
        node = handle.node
        if node.page_cache_etag != handle.etag and not self.opts.direct_io:
            # A newer version was opened since: the kernel caches what we return for the inode, not for
            # the handle, so old bytes returned now would be read by the newer handles too. ESTALE.
            # (With --direct-io nothing is cached: each handle reads its own version.)
            raise PreconditionFailed(f"{node.path} changed since this file was opened; open it again")
        local = self.cache.read_clean(node.ino, handle.etag, off, size)
        if local is not None:
            return local
        return await handle.reader.read(off, size)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        handle = self.handles.file(fh)
        copy = self.cache.get(handle.ino)
        if not handle.writable or copy is None:
            raise BadHandle(f"file handle {fh} is not open for writing")
        parts = await self.cache.write(copy, self._key_of(copy), off, data)
        self.uploader.stream(copy, parts, off, off + len(data))
        node = handle.node
        node.size = max(node.size, off + len(data))
        node.mtime = self._wall()
        return len(data)

    async def flush(self, fh: int) -> None:
        """close() of one descriptor (and fsync): publish what was written, so others see it after."""
        handle = self.handles.file(fh)
        copy = self.cache.get(handle.ino)
        if handle.writable and copy is not None:
            await self._publish(copy)

    async def _publish(self, copy: LocalCopy) -> None:
        node = copy.node
        try:
            info = await self.uploader.publish(copy)
        except WriteConflict:
            self.sb.stale(node)  # the key holds theirs, which the next open will see
            raise
        if info is None:
            return
        node.etag = node.meta_etag = info.etag
        if not copy.mtime_set:
            node.mtime = info.last_modified  # what a HEAD will say from now on
        node.fresh_until = self.sb.fresh_until()
        if self.sb.linked(node):
            self.sb.listed_file(node, info)

    async def release(self, fh: int) -> None:
        handle = self.handles.close_file(fh)
        if handle is None:
            return
        copy = self.cache.get(handle.ino)
        if copy is None or not handle.counted:
            return
        copy.handles -= 1
        if copy.handles > 0:
            return
        try:
            await self._publish(copy)
        finally:
            await self._after_last_close(copy)

    async def _after_last_close(self, copy: LocalCopy) -> None:
        """Nobody has ``copy`` open any more: keep it as the clean cache of its version, drop it, or
        (an acknowledged upload that failed) leave it live for the background retry."""
        if copy.unsent:
            log.error(
                "op=release path=%r: not uploaded yet; kept at %s and retried in the background",
                copy.node.path,
                copy.path,
            )
            return
        with trio.CancelScope(shield=True):
            await self.uploader.wait_for_sends(copy)
            if copy.state is not WriteState.CLEAN:
                await self.uploader.drop_upload(copy)
        if self.cache.settle(copy):
            self._repin(copy.node)
        self.sb.inodes.drop_if_forgotten(copy.node.ino)

    def _published_later(self, copy: LocalCopy) -> None:
        """A background retry published ``copy`` (its upload had failed at close)."""
        if copy.state is WriteState.CLEAN:
            node = copy.node
            node.etag = node.meta_etag = copy.base_etag
            node.fresh_until = 0.0  # the next stat asks S3 for the rest
            log.info("op=upload path=%r uploaded after an earlier failure", node.path)
        if copy.handles == 0:
            self._spawn(self._after_last_close, copy)

    def _repin(self, node: Inode) -> None:
        """The file's local copy is now its object's version ``node.etag``: handles opened before (which
        read the copy meanwhile) and the kernel's cached pages (written through) are of it."""
        node.page_cache_etag = node.etag
        for handle in self.handles.of(node):
            if handle.etag != node.etag:
                handle.reader.close()
                handle.etag, handle.reader = node.etag, self._reader(node)

    async def setattr(
        self,
        ino: int,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime: float | None = None,
    ) -> Attr:
        node = self.sb.node(ino)
        self.check_writable(f"change attributes of {node.path}")
        if size is not None:
            if node.is_dir:
                raise IsADirectory(f"{node.path} is a folder")
            copy = self.cache.get(ino)
            if copy is None:
                if not self.sb.linked(node):
                    raise NotFound(f"{node.path} was removed")
                node = await self.sb.head(node)
                copy = self.cache.get(ino) or await self._stage(node, truncate=size == 0)
            await self._truncate(node, copy, size)
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        node.uid = node.uid if uid is None else uid
        node.gid = node.gid if gid is None else gid
        node.mtime = node.mtime if mtime is None else mtime
        metadata_changed = (mode, uid, gid, mtime) != (None, None, None, None)
        copy = self.cache.get(ino)
        if copy is not None:
            if metadata_changed:
                self.cache.changed(copy)
                copy.mtime_set = copy.mtime_set or mtime is not None
            if copy.handles == 0:  # truncate(2) or chmod on a path, not through an open file: publish now
                try:
                    await self._publish(copy)
                finally:
                    await self._after_last_close(copy)
        elif metadata_changed and not node.is_dir:
            key = self.sb.ns.file_key(node.path)
            # copy_object: a symlink keeps its listable form, and objects over 5 GiB are copied in parts
            source = ObjectInfo(key, node.size, node.etag or "", node.mtime)
            node.etag = node.meta_etag = await copy_object(self.store, source, key, metadata=posix_metadata(node))
            self.sb.listed_file(node, ObjectInfo(key, node.size, node.etag, 0.0))  # 0: LastModified not known
        elif metadata_changed and node.ino != ROOT_INO:
            # A folder's attributes live in its marker object (as mkdir writes it; the root has none).
            await self.store.put(self.sb.ns.dir_prefix(node.path), b"", posix_metadata(node))
            self.sb.listed_folder(node)
        return node.attr()

    # -- changing the tree -------------------------------------------------------------------------

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self.sb.node(parent_ino)
        self.check_writable(f"unlink {name}")
        entry = await self.sb.entry(parent.path, name)
        if entry.is_dir:
            raise IsADirectory(f"{join(parent.path, name)} is a folder")
        path = join(parent.path, name)
        node = self.sb.inodes.by_path(path)
        copy = self.cache.get(node.ino) if node is not None else None
        if copy is None:
            await self.store.delete(self.sb.ns.file_key(path))
        else:
            async with copy.lock:  # a publish in flight lands first: our delete must come after it
                if copy.base_etag is not None or copy.state is WriteState.CLEAN:
                    await self.store.delete(self.sb.ns.file_key(path))
                await self._orphan(copy.node)
        if node is not None:
            await self._orphan(node)
        self.sb.inodes.unlink_path(path)
        self.sb.listed(path, None)

    async def _orphan(self, node: Inode) -> None:
        """``node`` lost its name (unlink, or a rename over it): open handles keep working on its local
        copy, which is never published any more, and is dropped at the last close."""
        copy = self.cache.get(node.ino)
        if copy is not None and copy.state is not WriteState.ORPHANED:
            copy.move(WriteState.ORPHANED)
            if copy.handles == 0:
                self._spawn(self._after_last_close, copy)
        self.cache.forget_clean(node.ino)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Attr:
        parent = self.sb.node(parent_ino)
        path = self._new_path(parent, name, "mkdir")
        try:
            await self.sb.entry(parent.path, name)
        except NotFound:
            pass
        else:
            raise FileExists(f"{path} exists")
        node = self.sb.inodes.put_dir(path, self._wall(), self.sb.fresh_until())
        node.mode, node.uid, node.gid = stat.S_IFDIR | stat.S_IMODE(mode), uid, gid
        try:
            await self.store.put(self.sb.ns.dir_prefix(path), b"", posix_metadata(node), if_none_match=True)
        except PreconditionFailed:
            raise FileExists(f"{path} exists") from None
        self.sb.new_folder(path)
        self.sb.inodes.acquire(node.ino)
        return node.attr()

    async def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self.sb.node(parent_ino)
        self.check_writable(f"rmdir {name}")
        path = join(parent.path, name)
        if not (await self.sb.entry(parent.path, name)).is_dir:
            raise NotADirectory(f"{path} is not a folder")
        marker = self.sb.ns.dir_prefix(path)
        page = await self.store.list_page(marker, "/", max_keys=2)
        local = any(self._is_local(c.node.ino) and c.node.path.startswith(path + "/") for c in self.cache.live())
        if local or page.prefixes or any(o.key != marker for o in page.objects):
            raise NotEmpty(f"{path} is not empty")
        await self.store.delete(marker)
        self.sb.inodes.unlink_path(path)
        self.sb.listed(path, None)
        self.sb.forget_listings(path)

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int) -> None:
        """Rename a file, symlink or folder: server-side copies, then deletes (S3 has no rename; neither
        is atomic, see docs/SEMANTICS.md). Open files and the kernel's inodes follow the new name; a file
        being written keeps being written, and is published under its new name at close."""
        src_parent, dst_parent = self.sb.node(old_parent), self.sb.node(new_parent)
        dst_path = self._new_path(dst_parent, new_name, "rename")
        src_path = join(src_parent.path, old_name)
        if flags & RENAME_EXCHANGE:
            raise NotSupported("rename with RENAME_EXCHANGE is not supported")
        source = await self.sb.entry(src_parent.path, old_name)
        if source.is_dir and dst_path.startswith(src_path + "/"):
            raise InvalidArgument(f"cannot move folder {src_path} into itself")
        try:
            target = await self.sb.entry(dst_parent.path, new_name)
        except NotFound:
            target = None
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FileExists(f"{dst_path} exists")
            if source.is_dir and not target.is_dir:
                raise NotADirectory(f"{dst_path} is not a folder")
            if target.is_dir and not source.is_dir:
                raise IsADirectory(f"{dst_path} is a folder")
        if src_path == dst_path:
            return  # rename(2) of a name onto itself does nothing
        if source.is_dir:
            await self._rename_folder(src_path, dst_path, target is not None)
        else:
            await self._rename_file(src_path, dst_path, source.info, target)
        self.sb.forget_listings(src_parent.path, dst_parent.path)

    async def _rename_file(self, src_path: str, dst_path: str, info: ObjectInfo | None, target: Entry | None) -> None:
        """``info``: what a listing or HEAD said of the source (None for a file with a local copy). A
        local copy is not published here (only close and fsync publish): the version it is based on, if
        any, is copied to the new key, and the copy is published there when it is closed."""
        node = self.sb.inodes.by_path(src_path)
        copy = self.cache.get(node.ino) if node is not None else None
        src_key, dst_key = self.sb.ns.file_key(src_path), self.sb.ns.file_key(dst_path)
        etag = None
        if copy is None or copy.base_etag is not None:
            if info is None or info.key != src_key:
                size = copy.base_size if copy else (node.size if node else 0)
                base = (copy.base_etag if copy else None) or (node.etag if node else None) or ""
                info = ObjectInfo(src_key, size, base, 0.0)
            etag = await copy_object(self.store, info, dst_key)
            await self.store.delete(src_key)
        elif target is not None and not target.is_dir:
            await self.store.delete(dst_key)  # the new file replaces it now; it is published at close
        replaced = self.sb.inodes.by_path(dst_path)
        if replaced is not None and replaced is not node:
            await self._orphan(replaced)
        self.sb.inodes.move(src_path, dst_path)
        if node is not None:
            await self._follow(node, etag)

    async def _rename_folder(self, src_path: str, dst_path: str, replace_target: bool) -> None:
        """Move every key of folder ``src_path`` (trees.py: copy all, then delete all). Local copies below
        it move along and are published under their new names at close."""
        below_src, below_dst = src_path + "/", dst_path + "/"
        if any(self._is_local(c.node.ino) and c.node.path.startswith(below_dst) for c in self.cache.live()):
            raise NotEmpty(f"{dst_path} is not empty")
        src_prefix, dst_prefix = self.sb.ns.dir_prefix(src_path), self.sb.ns.dir_prefix(dst_path)
        moved = await move_tree(self.store, src_prefix, dst_prefix, replace_target)
        for node in self.sb.inodes.move_tree(src_path, dst_path):
            if not node.is_dir:
                await self._follow(node, moved.get(node.path[len(below_dst) :]))
        self.handles.move_folders(src_path, dst_path)
        self.sb.forget_listings(src_path, dst_path, below=(below_src, below_dst))

    async def _follow(self, node: Inode, etag: str | None) -> None:
        """``node`` was renamed; its object is the copy of ETag ``etag`` now (None: nothing was copied).
        Open readers fetch from the new key, and a local copy's next publish is conditional on the
        copy's ETag. The copy keeps the metadata, so what a HEAD told of the old version holds."""
        if etag is not None:
            if node.meta_etag == node.etag:
                node.meta_etag = etag
            node.etag = etag
        copy = self.cache.get(node.ino)
        if copy is not None:
            if etag is not None and copy.base_etag is not None:
                copy.base_etag = etag
            await self.uploader.drop_upload(copy)  # its parts went to the old key
        key = self.sb.ns.file_key(node.path)
        for handle in self.handles.of(node):
            handle.reader.moved(key)

    # -- whole file system -------------------------------------------------------------------------

    async def recover(self, mode: OnRecovery = OnRecovery.UPLOAD) -> RecoveryReport:
        """At mount: handle what a stopped or dead daemon left in the cache folder (recovery.py)."""
        self.recovery = await recover(self, mode)
        return self.recovery

    async def publish_recovered(self, copy: LocalCopy) -> None:
        """Publish a copy rebuilt from a record; it stays live (shown, retried) if that fails."""
        try:
            await self._publish(copy)
        except WriteConflict:
            await self._after_last_close(copy)
            raise
        await self._after_last_close(copy)

    async def aclose(self) -> None:
        """At a stop: publish what a close or fsync acknowledged (bounded in time), keep everything else
        in the cache folder with its record, and say so per file. A file still open for writing is never
        published by a stop: the key keeps its last complete version."""
        with trio.move_on_after(UNMOUNT_UPLOAD_TIMEOUT) as scope:
            for copy in self.cache.live():
                if copy.state is WriteState.ACKED:
                    try:
                        await self._publish(copy)
                    except S3FilesError as exc:
                        log.error("op=unmount path=%r: upload failed (%s)", copy.node.path, exc)
        if scope.cancelled_caught:
            log.error("uploads at unmount took over %d s", UNMOUNT_UPLOAD_TIMEOUT)
        for copy in self.cache.live():
            with trio.CancelScope(shield=True):
                await self.cache.settled(copy)  # queued writes land before the descriptor is closed
            if copy.unsent:
                where = self.cache.keep_on_disk(copy)
                why = "acknowledged, upload failed" if copy.acknowledged else "still open for writing, never closed"
                log.error("op=unmount path=%r not uploaded (%s): kept at %s for the next mount", copy.node.path, why, where)
                self.cache.drop(copy, keep_data=True)
            else:
                await self.uploader.discard(copy)
        self.cache.close_all()
        self.folder.close()

    def status(self) -> dict[str, object]:
        """What ``s3files status`` shows: files not in S3 yet (waiting, uploading, open for writing), files
        kept in the cache folder after a stop or crash, conflict copies written, the cache's use."""
        return {
            "files": [
                {
                    "path": copy.node.path,
                    "state": copy.state.value,
                    "acknowledged": copy.acknowledged,
                    "bytes": copy.size(),
                    "open_handles": copy.handles,
                    "data": str(copy.path) if copy.path is not None else None,
                }
                for copy in self.cache.live()
                if copy.unsent
            ],
            "kept": self.recovery.kept,
            "conflicts": list(self.uploader.conflicts),
            "retrying_uploads": self.uploader.retrying,
            "cache_bytes": self.cache.used,
            "cache_limit": self.cache.limit,
            "memory_bytes": self.cache.memory,
            "recovery": self.recovery.summary(),
        }

    def statistics(self) -> dict[str, object]:
        return {
            **self.sb.statistics(),
            **self.handles.statistics(),
            **self.cache.statistics(),
            "spare_read_bytes": self._part_buffers.held_bytes,
            "retrying_uploads": self.uploader.retrying,
            "requests": self.store.requests.snapshot(),
        }


from s3files.core.superblock import Superblock  # noqa: E402  (after FileSystem: no import cycle)

__all__ = ["ROOT_INO", "Attr", "FileSystem", "OpenFile"]

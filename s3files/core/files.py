"""Open files and the life of their local copies: open, read, write, close, truncate, chmod.

Owns: what opening, reading, writing, closing and setattr ask of the superblock (names, attributes),
the handles, the local cache and the uploader, and what a close commits (``commit``): strict and
close-to-open publish at close and fsync, and after a path-based change (truncate(2), chmod) of a file
nobody has open; eventual mode acknowledges instead (``acknowledge``: durable in the cache folder, uploaded
later by the write-back, writeback.py), and only fsync uploads before it returns (not while the write-back
holds uploads back: it acknowledges then). Also what happens to
a copy whose file loses its name (``orphan``) or moves (``follow``). Must not change the tree (treeops.py)
nor decide about stops and recovery (fs.py).

Request budget (asserted by tests): ``open`` is one HEAD (close-to-open and strict: every open sees the
newest version; eventual: none while the file's attributes are fresh, superblock.trusts_open), or for a
cold read one GET of the first part (the read's first request); reads then pin its ETag.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import trio

from s3files.core.cache import LocalCache
from s3files.core.copies import CacheFull, LocalCopy
from s3files.core.handles import FileHandle, Handles
from s3files.core.inodes import ROOT_INO, Attr, Inode, marker_etag
from s3files.core.links import copy_object_version
from s3files.core.markers import FolderMarkers
from s3files.core.namespace import check_length, join, valid_name
from s3files.core.parts import MAX_OBJECT
from s3files.core.reader import PartBuffers, Reader, SharedReader, SharedReaders
from s3files.core.superblock import Superblock
from s3files.core.tasks import Spawn, run_all
from s3files.core.uploader import Uploader, WriteConflict, posix_metadata
from s3files.core.writeback import WriteBack
from s3files.core.writestate import WriteState
from s3files.errors import (
    BadHandle,
    FileExists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    PreconditionFailed,
    ReadOnly,
    TooLarge,
)
from s3files.options import Consistency, MountOptions
from s3files.store.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenFile:
    fh: int
    keep_cache: bool  # the kernel may keep its cached pages: the object is the version it cached
    attr: Attr
    direct_io: bool = False  # the kernel's page cache is bypassed for this open (--direct-io)


def privs_to_clear(mode: int) -> int:
    """The bits a write by a process without CAP_FSETID clears, as Linux does (should_remove_suid): SUID
    always, SGID only with group execute (without it, SGID marks mandatory locking). The kernel does this
    itself, with a setattr before the write, except for --direct-io writes: it then asks the file system
    (FUSE_WRITE_KILL_SUIDGID), a flag pyfuse3 does not pass on, so the adapter tells at open who writes."""
    kill = mode & stat.S_ISUID
    if mode & stat.S_ISGID and mode & stat.S_IXGRP:
        kill |= stat.S_ISGID
    return kill


class Files:
    """The file operations of one mount (see the module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        opts: MountOptions,
        sb: Superblock,
        cache: LocalCache,
        uploader: Uploader,
        handles: Handles,
        spawn: Spawn,
        wall: Callable[[], int],
        markers: FolderMarkers,
    ) -> None:
        self.store = store
        self.opts = opts
        self.sb = sb
        self.markers = markers
        self.cache = cache
        self.uploader = uploader
        self.handles = handles
        self._spawn = spawn
        self._wall = wall
        self._part_buffers = PartBuffers(opts.read.part_size, opts.read.max_window + opts.read.part_size, spawn)
        self._readers = SharedReaders()
        self._first_parts: dict[int, trio.Event] = {}  # inode -> an open fetching its first part
        self.write_back = opts.consistency is Consistency.EVENTUAL  # a close acknowledges, uploads later
        self.writeback = WriteBack(
            opts.writeback_delay, self.publish_due, self.after_last_close, spawn, held=opts.hold is not None
        )

    def key_of(self, copy: LocalCopy) -> str:
        return self.sb.ns.file_key(copy.node.path)

    @property
    def spare_read_bytes(self) -> int:
        return self._part_buffers.held_bytes

    def check_writable(self, what: str) -> None:
        """Every changing operation goes through here: a --read-only mount refuses with EROFS."""
        if self.opts.read_only:
            raise ReadOnly(f"{what}: the mount is read-only")

    def new_path(self, parent: Inode, name: str, what: str) -> str:
        self.check_writable(f"{what} {name}")
        if not parent.is_dir:
            raise NotADirectory(f"{parent.path} is not a folder")
        check_length(name)
        if not valid_name(name):
            raise InvalidArgument(f"not a valid name: {name!r}")
        return join(parent.path, name)

    async def open(self, ino: int, flags: int, clears_privs: bool = False) -> OpenFile:
        """Open file ``ino``. ``clears_privs``: the opener may not keep SUID/SGID bits when it writes (it
        lacks CAP_FSETID, see ``write``). An open for reading while another one fetches the file's first
        part waits for it, then shares its reader (programs that open one file at once cost one GET)."""
        fetching = self._first_parts.get(ino)
        other = None if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC) else fetching
        mine = trio.Event()
        try:
            return await self._open(ino, flags, clears_privs, mine, other)
        finally:
            if self._first_parts.get(ino) is mine:
                del self._first_parts[ino]
            mine.set()

    async def _ask_while(self, node: Inode, other: trio.Event) -> None:
        """Wait for another open's fetch of ``node``'s first part (``other``), and meanwhile ask S3 for
        the newest version as this open must (close-to-open): both at once, not the question after the
        fetch, a round trip less for each of K threads opening one file. The answer is applied after the
        fetch's, which was asked before this open began. (Eventual mode, trusting fresh attributes: only
        the wait.)"""
        if self.sb.trusts_open(node):
            await other.wait()
            return
        found: list[ObjectInfo] = []

        async def ask() -> None:
            found.append(await self.sb.ask(node))

        await run_all((other.wait, ask))
        self.sb.refreshed(node, found[0])

    async def _open(
        self, ino: int, flags: int, clears_privs: bool, fetching: trio.Event, other: trio.Event | None = None
    ) -> OpenFile:
        """``fetching``: set once this open's first-part GET, if it makes one, is done; ``other``: another
        open's, for a reader to wait for (``_ask_while``)."""
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
            if other is not None:
                await self._ask_while(node, other)
            if not writable and self._cold_to_read(node):
                self._first_parts[ino] = fetching  # (set before the first await: a later open sees it)
                node, first = await self.sb.get_first(node, self.opts.read.first_part)
            elif other is None and not self.sb.trusts_open(node):
                node = await self.sb.head(node)  # close-to-open, strict: every open sees the newest version
            copy = self.cache.get(ino)  # another open may have made the copy while we asked S3
            if copy is None and writable:
                copy = await self._stage(node, truncate)
                truncate = False
            if copy is not None:
                first = None
        if copy is not None and truncate:
            await self._truncate(node, copy, 0)
        if copy is not None and flags & os.O_TRUNC:
            # open(O_TRUNC) moves mtime and ctime as truncate(2) does, also of a file that was empty
            node.changed(self._wall(), data=True)
            self.cache.io.changed(copy)
        keep_cache = copy is None and self._kernel_caches(node)
        if copy is None:
            node.page_cache_etag = node.etag
        else:
            copy.handles += 1  # readers too: they read the local copy, which must outlive them
            node.page_cache_etag = None
        reader = self._reader(node, first if not keep_cache else None)
        handle = FileHandle(node, reader, writable, node.etag, counted=copy is not None, clears_privs=clears_privs)
        fh = self.handles.open_file(handle)
        return OpenFile(fh, keep_cache, node.attr(), self.opts.direct_io)

    def _cold_to_read(self, node: Inode) -> bool:
        """Open with one GET of the file's first part instead of a HEAD: it was not empty when last seen,
        and neither the kernel's page cache nor a clean local copy is likely to hold its bytes already.
        The price, for a program that opens a large file only to read elsewhere (a Parquet footer), is up
        to ``first_part`` bytes fetched in vain within the same round trip."""
        return (
            node.size > 0
            and not self._kernel_caches(node)
            and not self.cache.holds_clean(node.ino)
            and not self._readers.reading(node.ino, node.etag)  # another handle reads it: its parts are shared
        )

    def _kernel_caches(self, node: Inode) -> bool:
        """The kernel's page cache may hold this version's bytes: it cached them at an earlier open (never
        with --direct-io, where no open uses the page cache)."""
        return not self.opts.direct_io and node.page_cache_etag == node.etag

    def _reader(self, node: Inode, first: bytes | bytearray | None = None) -> SharedReader:
        """A handle's reader of ``node``'s version: the one other handles of that version read with, if
        any (``first`` is then not needed: ``_cold_to_read`` did not fetch it)."""
        key = self.sb.ns.file_key(node.path)
        opts, buffers = self.opts.read, self._part_buffers
        return self._readers.open(
            node.ino, node.etag, lambda: Reader(self.store, key, node.size, node.etag, opts, self._spawn, first, buffers)
        )

    async def _stage(self, node: Inode, truncate: bool) -> LocalCopy:
        """Make the local copy of ``node`` that writes go to (its parts are fetched when first needed)."""
        copy = self.cache.take_clean(node)  # the copy we uploaded last, if still this version
        if copy is None:
            copy = self.cache.create(node, node.etag, node.size, truncate)
        elif truncate:
            await self.cache.io.truncate(copy, 0)
        node.size = copy.size()
        return copy

    async def _truncate(self, node: Inode, copy: LocalCopy, size: int) -> None:
        await self.cache.io.truncate(copy, size)
        node.size = size
        node.changed(self._wall(), data=True)

    async def create(
        self, parent_ino: int, name: str, mode: int, uid: int, gid: int, flags: int = 0, clears_privs: bool = False
    ) -> OpenFile:
        """Create and open a new file; it exists in S3 once closed (or fsynced). Acquires the inode.

        A name another process of this mount created a moment ago (its file not closed yet) is opened
        instead, as O_CREAT does on any file system (EEXIST with O_EXCL)."""
        parent = self.sb.node(parent_ino)
        path = self.new_path(parent, name, "create")
        existing = self.sb.inodes.by_path(path)
        if existing is not None and self.sb.is_local(existing.ino):
            if flags & os.O_EXCL:
                raise FileExists(f"{path} exists")
            opened = await self.open(existing.ino, flags | (os.O_RDWR if not flags & os.O_WRONLY else 0), clears_privs)
            self.sb.inodes.acquire(existing.ino)
            return opened
        now = self._wall()
        node = self.sb.inodes.put_local_file(path, mode, uid, gid, now)
        self.markers.entries_changed(parent, now)
        copy = self.cache.create(node, None, 0, truncate=True)
        copy.handles = 1
        self.sb.inodes.acquire(node.ino)
        fh = self.handles.open_file(FileHandle(node, self._reader(node), True, counted=True, clears_privs=clears_privs))
        return OpenFile(fh, False, node.attr(), self.opts.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self.handles.file(fh)
        copy = self.cache.get(handle.ino)
        if copy is not None:
            return await self.cache.io.read(copy, self.key_of(copy), off, size)
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
        if off + len(data) > MAX_OBJECT:
            # As a local file system at its largest size: a write that starts there is EFBIG, one that
            # crosses it writes what fits (a short write).
            if off >= MAX_OBJECT:
                raise TooLarge(f"{handle.node.path}: a write at {off} is past the largest object S3 stores")
            data = data[: MAX_OBJECT - off]
        parts = await self.cache.io.write(copy, self.key_of(copy), off, data)
        self.uploader.parts.stream(copy, parts, off, off + len(data))
        node = handle.node
        node.size = max(node.size, off + len(data))
        node.changed(self._wall(), data=True)  # published with the data: what stat shows after a remount
        if handle.clears_privs:
            node.mode &= ~privs_to_clear(node.mode)  # published with the data this write changed
        return len(data)

    async def flush(self, fh: int) -> None:
        """close() of one descriptor: commit what was written (``commit``)."""
        handle = self.handles.file(fh)
        copy = self.cache.get(handle.ino)
        if handle.writable and copy is not None:
            await self.commit(copy)

    async def fsync(self, fh: int) -> None:
        """fsync(): upload the file before returning, in every mode; also through a descriptor open for
        reading, when the file waits for its upload (eventual mode's write-back, or a failed upload)."""
        handle = self.handles.file(fh)
        copy = self.cache.get(handle.ino)
        if copy is not None and self.writeback.held:
            if handle.writable:  # uploads held back (writeback.py): durable here, published later or never
                await self.acknowledge(copy)
        elif copy is not None and (handle.writable or copy.state is WriteState.ACKED):
            await self.publish(copy)

    async def commit(self, copy: LocalCopy) -> None:
        """What a close promises: published (strict, close-to-open), or acknowledged (eventual)."""
        if self.write_back:
            await self.acknowledge(copy)
        else:
            await self.publish(copy)

    async def acknowledge(self, copy: LocalCopy) -> None:
        """Eventual mode's close: make ``copy``'s bytes durable in the cache folder (data file and record
        fsynced, the record saying "acknowledged", state ACKED) and let the write-back upload them after
        ``--writeback-delay``; no S3 request. A copy the cache folder cannot take (full) is uploaded now
        instead, as close-to-open does. Waits for an upload of the copy in flight (its lock), so that a
        change made during it is acknowledged after it, never lost between the two. A REWRITTEN copy's
        kept version is dropped: the newer bytes are what this close acknowledges."""
        async with copy.lock:
            if copy.state is WriteState.BROKEN:
                self.cache.check_usable(copy)
            if copy.state not in (WriteState.DIRTY, WriteState.REWRITTEN) or copy.closed:
                return  # nothing new since the last acknowledgement (or upload)
            await self.cache.io.settled(copy)
            self.cache.check_usable(copy)
            superseded, full = None, None
            try:
                self.cache.spill(copy, record=False)  # (its first record is the durable one below)
            except CacheFull as exc:
                on_disk, full = False, exc
            else:
                on_disk = True
                # REWRITTEN: this acknowledgement replaces the version kept aside
                superseded = self.cache.io.drop_acked(copy)
                copy.acknowledged = True
                copy.ack_metadata = self.cache.metadata_of(copy)
                copy.move(WriteState.ACKED)
                self.cache.save(copy, durable=True)
            if on_disk:
                await self.uploader.forget_acked(copy, superseded)  # the record no longer names it
        if full is not None and self.writeback.held:
            raise full  # uploads held back (writeback.py): never published instead; the close fails
        if not on_disk:
            log.warning("op=close path=%r: the cache folder cannot keep it; uploading now", copy.node.path)
            await self.publish(copy)
            return
        self.writeback.arm(copy)

    async def publish_due(self, copy: LocalCopy, background: bool) -> None:
        """The write-back's (and ``sync``'s) upload of a waiting copy: its bytes if ACKED, the version
        kept aside if it was written again since (REWRITTEN)."""
        if copy.state is WriteState.REWRITTEN:
            await self.publish_acked(copy)
        else:
            await self.publish(copy, background=background)

    async def publish(self, copy: LocalCopy, background: bool = False) -> None:
        node = copy.node
        try:
            info = await self.uploader.publish(copy, background=background)
        except WriteConflict:
            self.sb.stale(node)  # the key holds theirs, which the next open will see
            raise
        if info is None:
            return
        node.etag = node.meta_etag = info.etag
        node.fresh_until = self.sb.fresh_until()
        if self.sb.linked(node):
            self.sb.listed_file(node, info)

    async def publish_acked(self, copy: LocalCopy) -> None:
        """Publish the acknowledged version a REWRITTEN copy keeps aside (uploader.py); the copy's newer
        bytes stay local and unacknowledged."""
        try:
            info = await self.uploader.publish_acked(copy)
        except WriteConflict:
            self.sb.stale(copy.node)
            raise
        if info is not None:
            self._published_aside(copy)

    def _published_aside(self, copy: LocalCopy) -> None:
        """The version kept aside is the object now; the node keeps showing the newer local bytes while
        the copy is live, and asks S3 at its next use once it is not."""
        copy.node.etag = copy.base_etag
        self.sb.stale(copy.node)

    async def publish_waiting(self, copy: LocalCopy) -> None:
        """Publish what a close or fsync acknowledged and is still waiting (a stop): the copy's bytes if
        ACKED, the version kept aside if REWRITTEN."""
        if copy.state is WriteState.REWRITTEN:
            await self.publish_acked(copy)
        else:
            await self.publish(copy)

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
            if not copy.sending.retry_pending:  # the flush before failed: its retry is scheduled
                await self.commit(copy)
        finally:
            await self.after_last_close(copy)

    async def after_last_close(self, copy: LocalCopy) -> None:
        """Nobody has ``copy`` open any more: keep it as the clean cache of its version, drop it, or
        (an acknowledged upload that failed) leave it live for the background retry."""
        if copy.state is WriteState.DIRTY and copy.handles == 0:
            # Bytes no close or fsync acknowledged, and nobody left to: kept, never published (the
            # version kept aside before them was). Recovery reports them as never closed.
            where = self.cache.keep_on_disk(copy)
            log.error("op=release path=%r: changes never closed, not uploaded; kept at %s", copy.node.path, where)
            self.cache.drop(copy, keep_data=True)
            self.sb.stale(copy.node)
            self.sb.kernel.data_changed(copy.node.ino)  # its pages and size were of the newer bytes
            self.sb.inodes.drop_if_forgotten(copy.node.ino)
            return
        if copy.unsent:
            if self.writeback.waiting(copy):
                return  # acknowledged, uploaded by the write-back (it settles the copy after)
            log.error(
                "op=release path=%r: not uploaded yet; kept at %s and retried in the background",
                copy.node.path,
                copy.path,
            )
            return
        with trio.CancelScope(shield=True):
            await self.uploader.parts.wait_for_sends(copy)
            if copy.state is not WriteState.CLEAN:
                await self.uploader.parts.drop_upload(copy)
        if self.cache.settle(copy):
            self._repin(copy.node)
        self.sb.inodes.drop_if_forgotten(copy.node.ino)

    def published_later(self, copy: LocalCopy) -> None:
        """A background retry published ``copy`` (its upload had failed at close)."""
        if copy.state is WriteState.CLEAN:
            node = copy.node
            node.etag = node.meta_etag = copy.base_etag
            node.fresh_until = 0.0  # the next stat asks S3 for the rest
            log.info("op=upload path=%r uploaded after an earlier failure", node.path)
        elif copy.state is WriteState.DIRTY:
            self._published_aside(copy)
            log.info("op=upload path=%r: its closed version uploaded after an earlier failure", copy.node.path)
        if copy.handles == 0:
            self._spawn(self.after_last_close, copy)

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
        mtime_ns: int | None = None,
        atime_ns: int | None = None,
    ) -> Attr:
        """chmod, chown, truncate, utimensat. Each moves the ctime (``write_metadata``, ``_truncate``); an
        atime is stored only when set here (reads never change it: a read must not cost a write)."""
        node = self.sb.node(ino)
        self.check_writable(f"change attributes of {node.path}")
        metadata_changed = (mode, uid, gid, mtime_ns, atime_ns) != (None, None, None, None, None)
        if metadata_changed:
            await self.describe(node, fresh=False)  # before the changes: a HEAD would undo them
        if size is not None:
            if node.is_dir:
                raise IsADirectory(f"{node.path} is a folder")
            if size > MAX_OBJECT:  # before anything changes: the file stays as it was
                raise TooLarge(f"{node.path}: {size} bytes is past the largest object S3 stores (5 TiB)")
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
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
            node.dir_changed_ns = 0  # a folder's utime wins over its earlier entry changes
        node.atime_ns = node.atime_ns if atime_ns is None else atime_ns
        if metadata_changed:
            await self.write_metadata(node)
        else:
            await self._publish_unopened(node)
        return node.attr()

    async def describe(self, node: Inode, fresh: bool) -> None:
        """Make ``node``'s metadata its object's own before it is read (getxattr) or rewritten (chmod,
        setxattr): a rewrite replaces all user metadata, so what only a HEAD shows (extended attributes, a
        device's number) must be known, not taken from a listing. ``fresh``: also within ``metadata_ttl``
        (a read; a rewrite needs only the version's). Nothing is asked for a local copy (ours is newer
        than S3's), an inode that lost its name, or the root (no object)."""
        if node.ino == ROOT_INO or self.cache.get(node.ino) is not None or not self.sb.linked(node):
            return
        if node.is_dir:
            marker = await self.sb.described.marker(node.path)  # cached for metadata_ttl
            if marker.metadata:
                self.sb.inodes.describe_dir(node, marker)
            else:
                node.xattr = None  # no marker, or one without metadata
                node.marker_etag = marker_etag(marker)
        elif node.meta_etag is None or node.meta_etag != node.etag or (fresh and not self.sb.is_fresh(node)):
            await self.sb.head(node)

    async def write_metadata(self, node: Inode) -> None:
        """``node``'s metadata (mode, owner, times, extended attributes) changed here, which moves its
        ctime: a local copy publishes it with its bytes (now, if no handle has it open), a closed file's
        object is rewritten by a server-side copy in place, a folder's marker is written."""
        node.changed(self._wall())
        copy = self.cache.get(node.ino)
        if copy is not None:
            if await self._reacknowledge_metadata(copy):
                return
            self.cache.io.changed(copy)
            await self._publish_unopened(node)
        elif not node.is_dir:
            key = self.sb.ns.file_key(node.path)
            # copy_object: a symlink keeps its listable form, and objects over 5 GiB are copied in parts
            source = ObjectInfo(key, node.size, node.etag or "", 0.0)
            metadata = posix_metadata(node)
            node.etag, modified = await copy_object_version(self.store, source, key, metadata=metadata)
            node.meta_etag = node.etag
            self.sb.listed_file(node, ObjectInfo(key, node.size, node.etag, modified, metadata))
        elif node.ino != ROOT_INO:
            # A folder's attributes live in its marker object (as mkdir writes it; the root has none).
            # Not while a write of its times is in flight (markers.py): that one must not land after ours.
            async with self.markers.quiet():
                info = await self.store.put(self.sb.ns.dir_prefix(node.path), b"", posix_metadata(node))
                node.marker_etag = info.etag
                self.markers.written(node)
            self.sb.learn(info)
            self.sb.listed_folder(node)

    async def _reacknowledge_metadata(self, copy: LocalCopy) -> bool:
        """Eventual mode, a metadata change (chmod, utime, setxattr) of a file nobody has open whose
        acknowledged bytes wait for their upload (rsync's temporary file between its close and its
        rename): the change is acknowledged as the close after it would be, in one durable record
        (its data file is not synced again: nothing landed in it since the close), without keeping a
        version aside first (REWRITTEN) only to drop it at once. The copy stays ACKED, re-armed; the
        upload carries the new metadata. Safe as the longer way is: the record on disk is the old one
        (old metadata, same bytes) or the new one, both acknowledged and publishable. False (nothing
        done) for any other copy."""
        if not self.write_back or copy.handles or copy.state is not WriteState.ACKED:
            return False
        async with copy.lock:
            if copy.handles or copy.state is not WriteState.ACKED or copy.acked is not None or copy.closed:
                return False  # an upload began meanwhile, or an open: the longer way
            copy.generation += 1
            copy.ack_metadata = self.cache.metadata_of(copy)
            self.cache.save(copy, durable=True)
        self.writeback.arm(copy)
        return True

    async def _publish_unopened(self, node: Inode) -> None:
        """A change through a path (truncate(2), chmod, utime), not an open file: a local copy nobody has
        open is committed now (eventual mode: folded into its pending upload, rsync's chmod and utime
        after the close and before the rename)."""
        copy = self.cache.get(node.ino)
        if copy is not None and copy.handles == 0:
            try:
                await self.commit(copy)
            finally:
                await self.after_last_close(copy)

    async def orphan(self, node: Inode) -> None:
        """``node`` lost its name (unlink, or a rename over it): open handles keep working on its local
        copy, which is never published any more, and is dropped at the last close."""
        copy = self.cache.get(node.ino)
        if copy is not None and copy.state is not WriteState.ORPHANED:
            copy.move(WriteState.ORPHANED)
            self.cache.save(copy)  # recovery must not publish it, and aborts its upload if it dies first
            await self.uploader.parts.drop_upload(copy)  # its parts are never going to be completed
            if copy.handles == 0:
                self._spawn(self.after_last_close, copy)
        self.cache.forget_clean(node.ino)

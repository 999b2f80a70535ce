"""The file system: one mount's rooms, composed into the operations the FUSE adapter calls.

Owns: building the rooms and handing each what it may ask of the others: the superblock (names,
listings, attributes: superblock.py), the handles (handles.py), the local cache (cache.py, records.py),
the uploader (uploader.py), the file operations (files.py) and the tree operations (treeops.py); the
operations on names and folders that only ask the superblock (lookup, getattr, readdir); and the mount's
whole life: recovery at mount (recovery.py) and what a stop publishes and keeps. Returns plain dataclasses
(``Attr``, ``OpenFile``) or raises ``S3FilesError``; knows nothing of FUSE, so it is tested directly
against the in-memory store, and through a real mount against S3 servers.
"""

from __future__ import annotations

import logging
import resource
import stat
import time
from collections.abc import Callable
from pathlib import Path

import trio

from s3files.core.cache import LocalCache
from s3files.core.copies import LocalCopy, clean_files_for
from s3files.core.files import Files, OpenFile
from s3files.core.handles import DirHandle, Handles
from s3files.core.heldtree import HeldChanges, journal_path
from s3files.core.heldview import HeldView
from s3files.core.inodes import ROOT_INO, Attr, Inode
from s3files.core.kernel import KernelCache
from s3files.core.markers import FolderMarkers
from s3files.core.metacache import MetaCache
from s3files.core.namespace import Entry, check_length, join, valid_name
from s3files.core.parts import PartLayout
from s3files.core.records import CacheFolder
from s3files.core.recovery import OnRecovery, RecoveryReport, recover
from s3files.core.superblock import Superblock
from s3files.core.tasks import Spawn
from s3files.core.treeops import RENAME_EXCHANGE, RENAME_NOREPLACE, TreeOps
from s3files.core.uploader import Uploader, WriteConflict, posix_metadata
from s3files.core.writestate import WAITING, WriteState
from s3files.core.xattrs import ExtendedAttributes
from s3files.errors import NotADirectory, NotFound, S3FilesError
from s3files.options import MountOptions
from s3files.store.base import Copied, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

UNMOUNT_UPLOAD_TIMEOUT = 300  # seconds a stop waits for acknowledged files before keeping them on disk


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
        wall: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.opts = opts
        if isinstance(staging, CacheFolder):
            self.folder = staging  # opened (and closed) by the caller
        else:
            self.folder = CacheFolder(staging, sync=opts.durability == "machine")
            self.folder.open()
        # A held mount's name operations talk to S3 through HeldView: its tree changes are held back with
        # its uploads (heldtree.py); the uploader talks to S3 itself (it runs only once the hold ended).
        self.held_tree = HeldChanges(journal_path(self.folder.root))
        view: ObjectStore = store
        if opts.hold is not None:
            view = HeldView(store, self.held_tree, lambda: self.files.writeback.held)
        self.view = view
        self.cache = LocalCache(
            view,
            self.folder,
            lambda copy: (self.files.key_of(copy), posix_metadata(copy.node)),
            spawn,
            PartLayout(opts.upload_part_size),
            trio.Semaphore(max(1, opts.upload_concurrency)),
            limit=opts.cache_size,
            max_clean_files=clean_files_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
            held=lambda: self.files.writeback.held,
        )
        self.meta = MetaCache(self.folder.metadata)
        self.sb = Superblock(view, opts, self._is_local, now, wall, self.meta, spawn)
        self.uploader = Uploader(
            store, self.cache, spawn, lambda copy: self.files.key_of(copy), lambda copy: self.files.published_later(copy), wall
        )
        self.handles = Handles()
        self.markers = FolderMarkers(view, self.sb, spawn, now, enabled=not opts.read_only)
        self.files = Files(view, opts, self.sb, self.cache, self.uploader, self.handles, spawn, wall, self.markers)
        self.tree = TreeOps(view, self.sb, self.cache, self.handles, self.files, self.uploader, wall)
        self.xattrs = ExtendedAttributes(self.sb, self.files, opts.xattrs, wall)
        self.recovery = RecoveryReport()

    def _is_local(self, ino: int) -> bool:
        """Whether ``ino`` has a local copy that still has its name (its attributes are ours)."""
        copy = self.cache.get(ino)
        return copy is not None and copy.state is not WriteState.ORPHANED

    # -- names and folders -------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Attr:
        """Find ``name`` in folder ``parent_ino``; the kernel then holds one more reference to it."""
        parent = self.sb.node(parent_ino)
        if not parent.is_dir:
            raise NotADirectory(f"{parent.path} is not a folder")
        check_length(name)
        if not valid_name(name):
            raise NotFound(f"not a valid name: {name!r}")
        node = self.sb.record(join(parent.path, name), await self.sb.entry(parent.path, name))
        self.sb.inodes.acquire(node.ino)
        return node.attr()

    async def getattr(self, ino: int) -> Attr:
        node = self.sb.node(ino)
        if self.sb.is_fresh(node) or self.cache.get(ino) is not None or node.unlinked:
            # A local copy (also of an unlinked file still open) is the truth; a file that lost its name is
            # never asked about by that name, which may be another file's by now.
            return node.attr()
        return (await self.sb.revalidate(node)).attr()

    def valid_for(self, ino: int) -> float:
        """Seconds the kernel may cache ``ino``'s name and attributes (entry and attribute timeouts)."""
        return self.sb.valid_for(self.sb.node(ino))

    def where(
        self, ino: int | None = None, fh: int | None = None, parent: int | None = None, name: str | None = None
    ) -> tuple[str, str] | None:
        """The path (``/a/b``) and S3 key of what an operation is about (inode ``ino``, handle ``fh``, or
        ``name`` in folder ``parent``), for a failed operation's log line; None when not known (never
        raises, never asks S3)."""
        path: str | None = None
        is_dir = False
        if fh is not None:
            path = self.handles.path_of(fh)
        elif ino is not None:
            node = self.sb.inodes.get(ino)
            if node is not None:
                path, is_dir = node.path, node.is_dir
        elif parent is not None and name is not None:
            node = self.sb.inodes.get(parent)
            if node is not None:
                path = join(node.path, name)
        if path is None:
            return None
        return "/" + path, self.sb.ns.dir_prefix(path) if is_dir else self.sb.ns.file_key(path)

    def use_kernel_cache(self, kernel: KernelCache) -> None:
        """The FUSE session runs: tell its kernel of changes learnt from S3 from now on (core/kernel.py)."""
        self.sb.kernel = kernel

    def forget(self, ino: int, n: int) -> None:
        # pinned: a local copy needs the inode, or a folder's times are not in its marker yet
        self.sb.inodes.forget(ino, n, pinned=self.cache.get(ino) is not None or self.markers.pending(ino))

    def acquire(self, ino: int) -> None:
        self.sb.inodes.acquire(ino)

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
                if parent == handle.path and self.sb.is_local(copy.node.ino) and self.sb.linked(copy.node):
                    entries[name] = copy.node
            handle.entries = sorted(entries.items())
        result = []
        record = self.sb.recorder(handle.path)
        for index in range(start, len(handle.entries)):
            name, entry = handle.entries[index]
            if isinstance(entry, Inode):
                node = entry
            else:
                try:
                    node = record(name, entry)
                except NotFound:
                    continue
            result.append((name, node.attr(), index + 1))
        return result

    def releasedir(self, fh: int) -> None:
        self.handles.close_dir(fh)

    # -- files (files.py) and the tree (treeops.py) ------------------------------------------------

    def check_writable(self, what: str) -> None:
        self.files.check_writable(what)

    async def open(self, ino: int, flags: int, clears_privs: bool = False) -> OpenFile:
        return await self.files.open(ino, flags, clears_privs)

    async def create(
        self, parent_ino: int, name: str, mode: int, uid: int, gid: int, flags: int = 0, clears_privs: bool = False
    ) -> OpenFile:
        gid, mode = self._new_owner(parent_ino, gid, mode, folder=False)
        return await self.files.create(parent_ino, name, mode, uid, gid, flags, clears_privs)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        return await self.files.read(fh, off, size)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        return await self.files.write(fh, off, data)

    async def flush(self, fh: int) -> None:
        await self.files.flush(fh)

    async def fsync(self, fh: int) -> None:
        await self.files.fsync(fh)

    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    async def setattr(self, ino: int, **changes: float | int | None) -> Attr:
        return await self.files.setattr(ino, **changes)  # type: ignore[arg-type]

    async def symlink(self, parent_ino: int, name: str, target: bytes, uid: int, gid: int) -> Attr:
        gid, _ = self._new_owner(parent_ino, gid, 0, folder=False)
        return await self.tree.symlink(parent_ino, name, target, uid, gid)

    async def readlink(self, ino: int) -> bytes:
        return await self.tree.readlink(ino)

    async def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        gid, mode = self._new_owner(parent_ino, gid, mode, folder=False)
        return await self.tree.mknod(parent_ino, name, mode, rdev, uid, gid)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.xattrs.get(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.xattrs.names(ino)

    async def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        await self.xattrs.set(ino, name, value)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.xattrs.remove(ino, name)

    async def unlink(self, parent_ino: int, name: str) -> None:
        check_length(name)
        await self.tree.unlink(parent_ino, name)

    async def mkdir(self, parent_ino: int, name: str, mode: int, uid: int, gid: int) -> Attr:
        gid, mode = self._new_owner(parent_ino, gid, mode, folder=True)
        return await self.tree.mkdir(parent_ino, name, mode, uid, gid)

    def _new_owner(self, parent_ino: int, gid: int, mode: int, folder: bool) -> tuple[int, int]:
        """The group and mode of a new entry: in a set-group-ID folder it takes the folder's group, and a
        new folder the bit too, as Linux's own file systems give them (inode_init_owner); over FUSE the
        kernel leaves that to the file system, and programs sharing a folder by group rely on it."""
        parent = self.sb.node(parent_ino)
        if parent.mode & stat.S_ISGID:
            return parent.gid, mode | (stat.S_ISGID if folder else 0)
        return gid, mode

    async def rmdir(self, parent_ino: int, name: str) -> None:
        check_length(name)
        await self.tree.rmdir(parent_ino, name)

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int) -> None:
        check_length(old_name)
        await self.tree.rename(old_parent, old_name, new_parent, new_name, flags)

    # -- the mount's whole life --------------------------------------------------------------------

    async def recover(self, mode: OnRecovery = OnRecovery.UPLOAD) -> RecoveryReport:
        """At mount: handle what a stopped or dead daemon left in the cache folder (recovery.py)."""
        self.recovery = await recover(self, mode)
        return self.recovery

    async def publish_recovered(self, copy: LocalCopy) -> None:
        """Publish a copy rebuilt from a record; it stays live (shown, retried) if that fails."""
        try:
            await self.files.publish_waiting(copy)
        except WriteConflict:
            await self.files.after_last_close(copy)
            raise
        await self.files.after_last_close(copy)

    async def sync(self, path: str | None = None) -> dict[str, str]:
        """``s3files sync``: upload now every file waiting for its upload (eventual mode's write-back, or
        a failed upload's retry), or those at or below ``path`` (relative to the mount's root); returns
        once every upload is done: path -> why, for each file that is not in S3 after (its upload failed
        or conflicted, or it is open for writing with changes no close acknowledged yet; and ``.`` for the
        changes of the tree held back, which only the hold's end makes)."""
        below = (path or "").strip("/")
        failed = await self.files.writeback.sync(
            copy
            for copy in self.cache.live()
            if not below or copy.node.path == below or copy.node.path.startswith(below + "/")
        )
        if self.files.writeback.held and self.held_tree:
            failed["."] = (
                f"{len(self.held_tree.changes)} changes of the tree held back: made only when the command"
                " succeeds (s3files exec --publish on-success)"
            )
        return failed

    async def publish_held(self) -> dict[str, str]:
        """``s3files exec --publish on-success``, its command succeeded: end the hold and send what it held
        back, in the order heldtree.py gives: the tree's creations (folder markers, copies of renamed
        objects), then the files (the write-back's hold ends, writeback.py: uploaded now, as ``sync``),
        then the deletes (removed and renamed objects), only if every file is in S3. Answers path -> why
        for what is not in S3 after; if the creations fail, nothing more is sent and the hold stays on."""
        if not self.files.writeback.held:
            return await self.sync()
        await self.markers.flush()  # folder times due a moment later: held changes too, made with them
        try:
            copied = await self.held_tree.apply_creations(self.store)
        except S3FilesError as exc:
            log.error("op=publish-held: the command's changes of the tree could not be applied: %s", exc)
            return {".": f"its changes of the tree could not be applied ({exc}); nothing more was sent"}
        await self._follow_copies(copied)
        for copy in self.cache.live():  # a held file that replaces a deleted object: the delete goes first
            change = self.held_tree.changes.get(self.files.key_of(copy))
            if copy.unsent and change is not None and change.kind == "delete":
                await self.store.delete(self.files.key_of(copy))
                self.held_tree.drop(self.files.key_of(copy))
        self.files.writeback.release()
        for copy in self.cache.live():
            if copy.unsent:
                self.cache.save(copy)  # its record no longer says held (if its upload fails, it is not)
        failed = await self.sync()
        if failed:
            if self.held_tree:
                log.error("op=publish-held: %d deletes not sent, as some files are not in S3", len(self.held_tree.changes))
                failed["."] = "its deletes and renames were not finished (a file is not in S3); kept in the cache folder"
            return failed
        try:
            await self.held_tree.apply_deletes(self.store)
        except S3FilesError as exc:
            failed["."] = f"its deletes could not all be sent ({exc}); the rest is kept in the cache folder"
        return failed

    async def _follow_copies(self, copied: dict[str, Copied]) -> None:
        """A held copy made now got another ETag than the job saw (a copy of a multipart object): the
        file's inode and local copy follow it, so its upload is conditional on what S3 holds."""
        prefix = self.sb.ns.file_key("")
        for key, made in copied.items():
            node = self.sb.inodes.by_path(key[len(prefix) :]) if key.startswith(prefix) else None
            if node is not None and not node.is_dir and node.etag != made.etag:
                await self.tree.follow(node, ObjectInfo(key, node.size, made.etag, made.last_modified))

    async def aclose(self) -> None:
        """At a stop: publish what a close or fsync acknowledged (bounded in time; eventual mode's files
        waiting for the write-back too), keep everything else in the cache folder with its record, and
        say so per file. A file still open for writing is never published by a stop: the key keeps its
        last complete version. While the write-back holds uploads back (``s3files exec --publish
        on-success`` whose command did not succeed), nothing is published: what waits is kept, its
        record saying held, or discarded (``MountOptions.hold``); no multipart upload is left in S3."""
        await self.markers.aclose()  # folder times not written yet (markers.py)
        held = self.files.writeback.held
        self._stop_held_tree(held)
        if not held:
            with trio.move_on_after(UNMOUNT_UPLOAD_TIMEOUT) as scope:
                waiting = [copy for copy in self.cache.live() if copy.state in WAITING]
                failed = await self.files.writeback.sync(waiting)
                for path, why in failed.items():
                    log.error("op=unmount path=%r: upload failed (%s)", path, why)
            if scope.cancelled_caught:
                log.error("uploads at unmount took over %d s", UNMOUNT_UPLOAD_TIMEOUT)
        for copy in self.cache.live():
            with trio.CancelScope(shield=True):
                await self.cache.io.settled(copy)  # queued writes land before the descriptor is closed
            if copy.unsent and held:
                with trio.CancelScope(shield=True):
                    await self._stop_held(copy)
            elif copy.unsent:
                where = self.cache.keep_on_disk(copy)
                if copy.state is WriteState.REWRITTEN:
                    why = "its closed version's upload failed, and it was written again since"
                elif copy.acknowledged:
                    why = "acknowledged, upload failed"
                else:
                    why = "still open for writing, never closed"
                log.error("op=unmount path=%r not uploaded (%s): kept at %s for the next mount", copy.node.path, why, where)
                self.cache.drop(copy, keep_data=True)
            else:
                await self.uploader.discard(copy)
        self.cache.close_all()
        self.held_tree.close()
        self.meta.close()
        self.folder.close()

    def _stop_held_tree(self, held: bool) -> None:
        """At a stop: the tree changes still held back are kept in their journal (the next mount reports
        them; ``--on-recovery upload-held`` applies them) or, with ``--on-failure discard``, forgotten."""
        if not self.held_tree:
            return
        if held and self.opts.hold == "discard":
            log.warning("op=unmount %d changes of the tree held back, discarded (the command did not succeed)", len(self.held_tree.changes))
            self.held_tree.discard()
            return
        for change in self.held_tree.summary():
            log.warning("op=unmount key=%r %s held back, not sent: kept in %s", change["key"], change["change"], self.held_tree.journal)

    async def _stop_held(self, copy: LocalCopy) -> None:
        """A stop while uploads are held back: ``copy`` is kept (its record says held) or discarded, and
        its multipart upload, if parts were streamed, is aborted either way."""
        if self.opts.hold == "discard":
            log.warning("op=unmount path=%r held back, discarded (the command did not succeed)", copy.node.path)
            await self.uploader.discard(copy)
            return
        await self.uploader.parts.wait_for_sends(copy)
        await self.uploader.parts.drop_upload(copy)
        where = self.cache.keep_on_disk(copy)
        log.warning("op=unmount path=%r held back, not uploaded (the command did not succeed): kept at %s", copy.node.path, where)
        self.cache.drop(copy, keep_data=True)

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
                    "writeback": self.files.writeback.waiting(copy),
                }
                for copy in self.cache.live()
                if copy.unsent
            ],
            "kept": self.recovery.kept,
            "held": self.files.writeback.held,
            "held_changes": self.held_tree.summary() + self.recovery.held_changes,  # this job's, then earlier ones'
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
            **self.markers.statistics(),
            "spare_read_bytes": self.files.spare_read_bytes,
            "retrying_uploads": self.uploader.retrying,
            "writeback_waiting": self.files.writeback.pending(),
            "writeback_uploads": self.files.writeback.uploaded,
            "requests": self.store.requests.snapshot(),
        }


__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "ROOT_INO", "Attr", "FileSystem", "OpenFile"]

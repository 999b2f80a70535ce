"""The local cache: one local copy per file, in memory or in the cache folder, and its record.

Owns: every local copy of one mount (``ino -> LocalCopy``, shared by every handle that has the file open,
as in any local file system; copies.py), the clean read cache (copies uploaded and closed, kept by inode and ETag), the memory and disk budgets
(``--cache-size``), and each copy's record in the cache folder (records.py). Must not upload (the
uploader does) nor decide when anything is published (fs.py does).

Why parts: S3 has no partial writes, so any change produces a new whole object; with one fixed
``PartLayout`` an edit touches only its parts, and the rest is copied inside S3 by the uploader.

Invariants:
- a part in ``changed`` differs from the base version (``base_etag``); a part not in it and wholly below
  ``base_size`` still equals the base's bytes at the same offsets (so it may be copied inside S3);
- a part below ``base_size`` is read from the local file only once it is in ``present``;
  above ``base_size`` the local file is the truth (zeros where never written);
- a copy in memory (``path`` None) is never larger than ``SPILL_BYTES`` and has no writes queued; it is
  moved to the cache folder before anything must outlive the process, and only copies there have records.

Why small new files start in memory: creating a file in the cache folder is the largest cost of creating
a small file through the mount (ext4 spends 0.1-0.8 ms of CPU per new inode), and until close returns
nothing written is promised to survive (a failed upload spills the copy and records it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from s3files.core.copies import (
    DEFAULT_CLEAN_BYTES,
    MEMORY_BYTES,
    SPILL_BYTES,
    AckedView,
    CacheFull,
    LocalCopy,
    Multipart,
    record_of,
)
from s3files.core.copyio import CopyIO
from s3files.core.inodes import Inode
from s3files.core.parts import PartLayout
from s3files.core.records import CacheFolder, Record
from s3files.core.writestate import WriteState
from s3files.store.base import ObjectStore

log = logging.getLogger(__name__)

class LocalCache:
    """Every local copy of one mount (see the module docstring); ``io`` reads and writes them (copyio.py).

    ``describe`` tells a copy's key and metadata for its record. ``slots`` bounds the parts fetched at once
    (shared with the uploader's sends); ``limit`` bounds the bytes on disk (``--cache-size``); past it
    writes fail with ENOSPC. Clean copies are evicted least recently used first when room is needed;
    unsent data never is.
    """

    def __init__(
        self,
        store: ObjectStore,
        folder: CacheFolder,
        describe: Callable[[LocalCopy], tuple[str, dict[str, str]]],
        spawn: Callable[..., object],
        layout: PartLayout,
        slots: trio.Semaphore,
        limit: int | None = None,
        max_clean_files: int = 256,
        memory_budget: int = MEMORY_BYTES,
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self._held = held  # whether uploads are held back now (writeback.py): every record says so
        self.folder = folder
        self._describe = describe  # a copy's key and POSIX metadata now (fs.py knows names)
        self.layout = layout
        self.slots = slots
        self.limit = limit
        self.max_clean_files = max_clean_files
        self.memory_budget = memory_budget
        self._spawn = spawn
        self.used = 0  # bytes of the cache folder's disk held by copies
        self.memory = 0  # bytes held by copies in memory
        self.pending = 0  # bytes of writes acknowledged but not on the local disk yet, over all files
        self._live: dict[int, LocalCopy] = {}  # ino -> the copy being changed (or just changed)
        self._clean: OrderedDict[int, LocalCopy] = OrderedDict()  # ino -> uploaded copy, LRU first
        self.io = CopyIO(self, store, layout, slots, spawn)

    def get(self, ino: int) -> LocalCopy | None:
        return self._live.get(ino)

    def key_of(self, copy: LocalCopy) -> str:
        return self._describe(copy)[0]

    def metadata_of(self, copy: LocalCopy) -> dict[str, str]:
        return self._describe(copy)[1]

    def live(self) -> list[LocalCopy]:
        return list(self._live.values())

    def adopt(self, copy: LocalCopy) -> None:
        """Make ``copy`` the live copy of its inode (there must be none)."""
        assert copy.node.ino not in self._live, "one local copy per file"
        self._live[copy.node.ino] = copy

    def create(self, node: Inode, base_etag: str | None, base_size: int, truncate: bool) -> LocalCopy:
        """The live copy of ``node`` from version ``base_etag`` (None: a new file). Nothing is fetched
        now: parts are fetched when a read or a partial write first needs them. An empty copy starts in
        memory when there is room (see SPILL_BYTES)."""
        size = 0 if truncate or base_etag is None else base_size
        copy_id = secrets.token_hex(8)
        if size == 0 and self.memory_room(SPILL_BYTES):
            fd, path = os.memfd_create("s3files-copy", os.MFD_CLOEXEC), None
        else:
            fd, path = self.folder.new_data(copy_id, size)
        copy = LocalCopy(copy_id, path, fd, base_etag=base_etag, base_size=size, node=node, length=size)
        if base_etag is None or (truncate and base_size > 0):
            copy.move(WriteState.DIRTY)  # even an empty new file is created
        self.adopt(copy)
        if path is not None:
            self.save(copy)
        return copy

    def open_recorded(self, record: Record, node: Inode) -> LocalCopy:
        """A copy rebuilt from a record a stopped or dead daemon left (recovery.py)."""
        path = self.folder.data_path(record.id)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        copy = LocalCopy(
            record.id,
            path,
            fd,
            base_etag=record.base_etag,
            base_size=record.base_size,
            node=node,
            state=WriteState(record.state),
            acknowledged=record.acknowledged,
            changed=dict.fromkeys(record.changed, 1),
            present=set(record.present),
            generation=1,
            length=record.size,
        )
        if copy.acknowledged:
            copy.ack_metadata = dict(record.metadata)
        if record.acked is not None:
            copy.acked = self._view_of(record.acked, copy.id)
            self.used += copy.acked.side_size
        self.account(copy)
        self.adopt(copy)
        return copy

    def _view_of(self, acked: dict[str, Any], copy_id: str) -> AckedView:
        """The acknowledged version a record kept aside. Its parts count as changed since (generation 0
        against the copy's 1): which were written after it is not recorded, and resending is safe."""
        extents = [(int(off), int(length), int(side)) for off, length, side in acked["extents"]]
        side_fd = None
        if extents:
            side_fd = os.open(self.folder.side_path(str(acked["side"])), os.O_RDWR | os.O_CLOEXEC)
        upload = None
        if acked.get("upload_id") and acked.get("upload_key"):
            upload = Multipart(str(acked["upload_key"]), str(acked["upload_id"]), {})
        return AckedView(
            size=int(acked["size"]),
            side=str(acked["side"]),
            metadata=dict(acked["metadata"]),
            base_size=int(acked["base_size"]),
            changed=dict.fromkeys((int(i) for i in acked["changed"]), 0),
            low=int(acked["low"]),
            extents=extents,
            side_fd=side_fd,
            side_size=max((side + length for _, length, side in extents), default=0),
            upload=upload,
        )

    def save_strictly(self, copy: LocalCopy) -> None:
        """Write ``copy``'s record durably (not its data file) or raise CacheFull: for a change that must
        not happen unless the record says so first (copyio.py, saving an acknowledged version aside)."""
        try:
            self.folder.save(self._record(copy), durable=True, data=False)
            copy.recorded_ack = copy.acknowledged
        except OSError as exc:
            raise CacheFull(f"the cache folder {self.folder.root} cannot take a record ({exc.strerror})") from None

    def _record(self, copy: LocalCopy) -> Record:
        record = record_of(copy, *self._describe(copy))
        record.held = self._held()
        return record

    def save(self, copy: LocalCopy, durable: bool = False) -> None:
        """Write ``copy``'s record (only copies in the cache folder have one; see the module docstring).
        ``durable``: the data file is synced too, unless nothing landed in it since its last sync (a
        chmod, utime or rename of a closed file changes only the record). The mark is cleared before
        the sync: a queued write that lands during it marks the file again, for the next durable save."""
        if copy.path is None or copy.closed:
            return
        sync_data = durable and copy.unsynced
        if durable:
            copy.unsynced = False
        try:
            self.folder.save(self._record(copy), durable=durable, data=sync_data)
            copy.recorded_ack = copy.acknowledged
        except OSError as exc:
            copy.unsynced = copy.unsynced or sync_data
            log.error("op=record path=%s cannot be written: %s", copy.path, exc)

    def memory_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit in memory, evicting clean copies held there if need be."""
        if self.memory + nbytes > self.memory_budget:
            for ino in [ino for ino, copy in self._clean.items() if copy.path is None]:
                self._drop(self._clean.pop(ino))
                if self.memory + nbytes <= self.memory_budget:
                    break
        return self.memory + nbytes <= self.memory_budget

    def spill(self, copy: LocalCopy, record: bool = True) -> None:
        """Move a copy held in memory into the cache folder (it grows past SPILL_BYTES, memory is short,
        or it must outlive the process). Synchronous, so nothing sees it half moved; on a full disk the
        copy stays in memory, unchanged, and CacheFull is raised. ``record`` False: the caller writes
        its record next, with no await between (a close's durable record)."""
        if copy.path is not None:
            return
        data = os.pread(copy.fd, copy.length, 0)  # a copy in memory never has writes queued
        if not self._disk_room(len(data)):
            raise self._full()
        try:
            fd, path = self.folder.new_data(copy.id, copy.length)
        except OSError as exc:
            raise self._unwritable(exc) from None
        try:
            self.pwrite(fd, data, 0)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)  # type: ignore[attr-defined]
            raise self._unwritable(exc) from None
        os.close(copy.fd)
        self.memory -= copy.allocated
        copy.fd, copy.path, copy.allocated = fd, path, 0
        self.account(copy)
        if record:
            self.save(copy)  # from now on a crash leaves it with its key, for recovery

    def keep_on_disk(self, copy: LocalCopy) -> str:
        """Make ``copy`` and its record outlive the process, durably; where its bytes are now."""
        try:
            self.spill(copy)
        except CacheFull as exc:
            return f"memory only, lost at exit: {exc}"
        self.save(copy, durable=True)
        return str(copy.path)

    def _unwritable(self, exc: OSError) -> CacheFull:
        return CacheFull(f"the cache folder {self.folder.root} is full or unwritable ({exc.strerror})")

    def break_copy(self, copy: LocalCopy, why: str) -> None:
        """A change the program made did not land: the copy is not what it wrote, so never publish it.
        A REWRITTEN copy stays REWRITTEN: the version it keeps aside is intact (every byte of it a change
        reaches is saved before the change), so it is still published, and the copy is BROKEN after
        that (copyio.py ``rebase``)."""
        copy.broken = why
        if copy.state is WriteState.REWRITTEN and copy.acked is not None:
            pass
        elif copy.state is not WriteState.ORPHANED:
            copy.move(WriteState.BROKEN)
        self.save(copy)  # recovery must not publish it, and aborts its upload if it dies with one

    def unrecord(self, copy: LocalCopy) -> None:
        """``copy`` has nothing a recovery may publish nor abort (clean, or its conflict copy written): its
        record goes at once, its data file when the copy is dropped."""
        if copy.path is not None:  # a copy in memory never has a record
            self.folder.remove(copy.id, keep_data=True)
        copy.recorded_ack = False

    def check_usable(self, copy: LocalCopy) -> None:
        if copy.broken is not None:
            raise CacheFull(f"an earlier write failed ({copy.broken}); close and write the file again")

    def disk_room(self, nbytes: int) -> bool:
        return self._disk_room(nbytes)

    def _disk_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit under ``--cache-size``, evicting clean copies if need be."""
        nbytes += self.pending
        if self.limit is not None and self.used + nbytes > self.limit:
            self._trim(nbytes, self.limit)
        return self.limit is None or self.used + nbytes <= self.limit

    def _full(self) -> CacheFull:
        return CacheFull(
            f"the cache holds {self.used} bytes of unsent data, its limit (--cache-size) is {self.limit};"
            " close files to upload them, or raise --cache-size"
        )

    def account(self, copy: LocalCopy) -> None:
        """``copy``'s file changed (a write landed, a part was fetched, a truncate, a spill): count its
        blocks, and mark it for a sync at the next durable record (``save``)."""
        copy.unsynced = True
        allocated = os.fstat(copy.fd).st_blocks * 512
        if copy.path is None:
            self.memory += allocated - copy.allocated
        else:
            self.used += allocated - copy.allocated
        copy.allocated = allocated

    def reserve(self, copy: LocalCopy, nbytes: int) -> None:
        if copy.path is not None and not self._disk_room(nbytes):
            self.break_copy(copy, "the cache was full")
            raise self._full()

    def fail(self, copy: LocalCopy, exc: OSError) -> None:
        self.break_copy(copy, os.strerror(exc.errno or errno.EIO))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFull(f"the cache folder {self.folder.root} is full; free space there") from None
        raise exc

    def pwrite(self, fd: int, data: bytes, off: int) -> int:
        """pwrite now; on a full disk, evict every clean copy and try once more."""
        try:
            return os.pwrite(fd, data, off)
        except OSError as exc:
            if not self.made_room(exc):
                raise
        return os.pwrite(fd, data, off)

    def made_room(self, exc: OSError) -> bool:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._clean:
            return False
        self._trim(0, None)
        return True

    def settle(self, copy: LocalCopy) -> bool:
        """The last handle of ``copy`` closed and nothing is left to send: keep it as the clean cache of
        its version, or drop it. True if it was kept clean. (Unsent copies stay live: see fs.py.)"""
        assert not copy.unsent and copy.sending.in_flight == 0
        if self._live.get(copy.node.ino) is copy:
            del self._live[copy.node.ino]
        if copy.state is not WriteState.CLEAN or copy.sending.upload is not None or copy.base_etag is None:
            self._drop(copy)
            return False
        self.unrecord(copy)  # clean: nothing to recover; the data file is swept at the next mount
        old = self._clean.pop(copy.node.ino, None)
        if old is not None:
            self._drop(old)
        self._clean[copy.node.ino] = copy
        self._trim(0, self.limit if self.limit is not None else DEFAULT_CLEAN_BYTES)
        return True

    def take_clean(self, node: Inode) -> LocalCopy | None:
        """The clean copy of ``node``'s current version, made live to be written to (or None)."""
        copy = self._clean.pop(node.ino, None)
        if copy is None:
            return None
        if copy.base_etag != node.etag or copy.size() != node.size:
            self._drop(copy)  # an older version: the object changed since
            return None
        copy.node = node
        self.adopt(copy)
        return copy

    def read_clean(self, ino: int, etag: str | None, off: int, size: int) -> bytes | None:
        """Bytes from the clean copy of version ``etag`` if it holds the whole file, else None."""
        copy = self._clean.get(ino)
        if copy is None or etag is None or copy.base_etag != etag:
            return None
        if len(copy.present) < self.layout.count(copy.base_size):
            return None  # some parts were copied inside S3 and never came here
        self._clean.move_to_end(ino)
        return os.pread(copy.fd, size, off)

    def holds_clean(self, ino: int) -> bool:
        return ino in self._clean

    def forget_clean(self, ino: int) -> None:
        copy = self._clean.pop(ino, None)
        if copy is not None:
            self._drop(copy)

    def _trim(self, nbytes: int, limit: int | None) -> None:
        """Evict clean copies, oldest first, until ``nbytes`` more fit under ``limit`` (None: all)."""
        for _ in range(len(self._clean)):
            if limit is not None and self.used + nbytes <= limit and len(self._clean) <= self.max_clean_files:
                return
            self._drop(self._clean.popitem(last=False)[1])

    def drop(self, copy: LocalCopy, keep_data: bool = False) -> None:
        """Forget a copy that is not live any more (or must stop being live): close it and delete its
        file and record unless ``keep_data`` (kept after a stop: recovery finds it)."""
        if self._live.get(copy.node.ino) is copy:
            del self._live[copy.node.ino]
        self._drop(copy, keep_data)

    def _drop(self, copy: LocalCopy, keep_data: bool = False) -> None:
        keep_data = keep_data or copy.kept
        copy.closed = True
        with contextlib.suppress(OSError):
            os.close(copy.fd)
        if copy.acked is not None:
            self.used -= copy.acked.side_size
            copy.acked.side_size = 0
            if copy.acked.side_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(copy.acked.side_fd)
                copy.acked.side_fd = None
        if copy.path is None:
            self.memory -= copy.allocated
        else:
            self.used -= copy.allocated
            if not keep_data:
                self.folder.remove(copy.id)
        copy.allocated = 0

    def close_all(self) -> None:
        """At unmount: drop clean copies; close (and keep on disk) what is still live."""
        self._trim(0, None)
        for copy in list(self._live.values()):
            self.drop(copy, keep_data=True)

    @property
    def clean_count(self) -> int:
        return len(self._clean)

    def statistics(self) -> dict[str, int]:
        return {
            "local_copies": len(self._live),
            "unsent_files": sum(1 for c in self._live.values() if c.unsent),
            "cache_bytes": self.used,
            "memory_bytes": self.memory,
            "clean_files": len(self._clean),
        }

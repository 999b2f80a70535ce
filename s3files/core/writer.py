"""Files being written: their local staged copies, and turning them into objects with conditional writes.

Owns: the staged copy of a file open for writing (a sparse file under the cache folder with the file's
logical size, or, while a new file is small, an anonymous file in memory), which parts of it hold real
bytes, the multipart upload that parts stream into while the program is still writing, and the final
conditional write: If-None-Match for a new key, If-Match with the ETag we started from for an overwrite.
On a conflict nothing is lost: the outside version stays at the key, ours is uploaded beside it as
``NAME.s3files-conflict-<UTC timestamp>``, and the caller gets ``WriteConflict`` (EIO at close/fsync).
Must not decide *when* to commit (fs.py does: flush/fsync/close, which is close-to-open) nor touch inodes
beyond reading the one a staged file belongs to.

Why parts: S3 has no partial writes, so any change produces a new whole object. Cutting every file into
the same fixed parts (``PartLayout``) lets an edit touch only its parts: opening a 10 GiB file and changing
a few bytes fetches one part, uploads one part, and copies every other part inside S3 (UploadPartCopy);
a sequential writer's finished parts are uploaded while it writes, so close() only sends the tail.

Invariants:
- a part in ``changed`` differs from the base version (``base_etag``); a part not in it and wholly below
  ``base_size`` still equals the base's bytes at the same offsets (so it may be copied inside S3);
- a part below ``base_size`` is read from the local file only once it is in ``present`` (fetched, or
  wholly overwritten); above ``base_size`` the local file is the truth (zeros where never written);
- a part sent while streaming is reused at commit only if its generation and length are unchanged;
- a copy in memory (``path`` None) is never larger than ``SPILL_BYTES``, has no writes queued and no parts
  streamed, and is moved to the cache folder before anything must outlive the process.

Why small new files start in memory: creating a file in the cache folder is the largest cost of creating
a small file through the mount (ext4 spends 0.1-0.8 ms of CPU per new inode while recently deleted ones
are still being skipped, as after any unmount or eviction), and until close returns nothing written is
promised to survive a crash (close uploads it; the eventual mode, which acknowledges at close, will spill).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NoReturn

import trio

from s3files.core.inodes import Inode
from s3files.core.tasks import run_all
from s3files.errors import ObjectNotFound, PreconditionFailed, S3FilesError
from s3files.store.base import CompletedPart, ObjectInfo, ObjectStore, abort_quietly

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's minimum part size (all parts but the last)
MAX_PART = 5 * 1024**3  # S3's maximum part size
MAX_PARTS = 10_000
TIER_PARTS = 1_000  # parts per size tier: each tier's parts are twice the size of the previous tier's
SMALL_IO = 256 * 1024  # local reads and writes up to this size are done inline, without a worker thread
WRITE_BEHIND_BYTES = 4 * 1024 * 1024  # per file: writes acknowledged before they reach the local disk
DEFAULT_CLEAN_BYTES = 1024**3  # uploaded copies kept as a read cache when no --cache-size is given
MAX_CLEAN_FILES = 16384  # each clean copy holds a file descriptor: see clean_files_for()
SPILL_BYTES = 1024 * 1024  # a new file is staged in memory until it grows past this
MEMORY_BYTES = 64 * 1024 * 1024  # bytes all copies held in memory may use together (open and clean)


def clean_files_for(descriptor_limit: int) -> int:
    """How many clean copies to keep open: a quarter of the process's descriptors (the rest stay for
    files being written, sockets and the kernel's requests), within [64, MAX_CLEAN_FILES]. Evicting a
    copy costs an unlink on the FUSE path, so a cache of many small files should not evict early."""
    return max(64, min(MAX_CLEAN_FILES, descriptor_limit // 4))


class WriteConflict(S3FilesError):
    """Someone else changed the object since we read it; ours was kept beside it (or on local disk)."""

    errno = errno.EIO


class CacheFull(S3FilesError):
    """The local cache's disk (or ``--cache-size``) is full: the write is refused, nothing is uploaded."""

    errno = errno.ENOSPC


@dataclass(frozen=True)
class PartLayout:
    """Where every file's parts start and end: ``TIER_PARTS`` parts of ``base`` bytes, then 1,000 of twice
    that, and so on. Files up to ~8 TB (S3 allows 5 TiB) fit in 10,000 parts, and the layout never depends
    on the final size, which a streaming writer does not know yet."""

    base: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if not MIN_PART <= self.base <= MAX_PART >> 9:
            raise ValueError(f"part size must be between 5 MiB and {MAX_PART >> 29} MiB")

    def span(self, index: int) -> tuple[int, int]:
        """Bytes ``[start, end)`` of part ``index`` (0-based; part number ``index + 1``)."""
        tier, within = divmod(index, TIER_PARTS)
        size = self.base << tier
        start = TIER_PARTS * self.base * ((1 << tier) - 1) + within * size
        return start, start + size

    def index(self, offset: int) -> int:
        """The part holding byte ``offset``."""
        for tier in range(MAX_PARTS // TIER_PARTS):
            tier_end = TIER_PARTS * self.base * ((1 << (tier + 1)) - 1)
            if offset < tier_end:
                tier_start = TIER_PARTS * self.base * ((1 << tier) - 1)
                return tier * TIER_PARTS + (offset - tier_start) // (self.base << tier)
        raise CacheFull(f"offset {offset} is beyond the largest object S3 can store")

    def count(self, size: int) -> int:
        """How many parts an object of ``size`` bytes has (at least one)."""
        return self.index(size - 1) + 1 if size > 0 else 1

    def overlapping(self, start: int, end: int) -> range:
        """Indices of the parts that bytes ``[start, end)`` touch."""
        if end <= start:
            return range(0)
        return range(self.index(start), self.index(end - 1) + 1)


@dataclass(eq=False)
class _Multipart:
    """A multipart upload in progress at ``key``, and the parts sent to it: index -> (generation, length,
    part)."""

    key: str
    upload_id: str
    metadata: dict[str, str]
    sent: dict[int, tuple[int, int, CompletedPart]] = field(default_factory=dict)


@dataclass(eq=False)
class StagedFile:
    """The local copy of one file being changed. ``base_etag`` None means: the key did not exist."""

    path: Path | None  # None: held in memory (an anonymous memfd), see SPILL_BYTES
    fd: int
    base_etag: str | None
    base_size: int
    node: Inode  # the file's inode, held: a dirty copy must find its key even after the kernel forgot it
    dirty: bool = False  # something (data, size or metadata) differs from the object at the key
    handles: int = 0
    unlinked: bool = False
    broken: str | None = None  # why this copy must never be uploaded (a write into it failed)
    closed: bool = False  # discarded: background sends must not touch it
    keep_file: bool = False  # holds changes that could not be uploaded anywhere: never delete it
    mtime_set: bool = False  # mtime was set explicitly (utime) after the last write: store it
    changed: dict[int, int] = field(default_factory=dict)  # part index -> generation of its last change
    present: set[int] = field(default_factory=set)  # parts below base_size whose bytes are local
    fetching: dict[int, trio.Event] = field(default_factory=dict)
    upload: _Multipart | None = None
    sending: int = 0  # parts being sent in the background
    sent_event: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one commit at a time
    upload_lock: trio.Lock = field(default_factory=trio.Lock)  # one CreateMultipartUpload at a time
    generation: int = 0
    allocated: int = 0  # bytes of the cache disk this copy holds (counted against --cache-size)
    length: int = 0  # the file's size: the local file catches up once pending writes are done
    last_write: trio.Event | None = None  # set when every write queued so far is on the local disk
    pending: int = 0  # bytes queued for the local disk, not written yet

    def size(self) -> int:
        return self.length

    def touch(self, parts: range) -> None:
        """Mark ``parts`` changed (a new generation: a part sent before must be sent again)."""
        self.generation += 1
        for index in parts:
            self.changed[index] = self.generation
        self.dirty = True
        self.mtime_set = False


class Staging:
    """Owns every staged copy of one mount: creating, fetching missing parts, writing, committing.

    ``concurrency`` bounds the parts in flight (uploads, copies and fetches) across all files; memory
    held by uploads is at most ``concurrency`` parts. ``limit`` bounds the bytes the cache holds on disk
    (``--cache-size``); past it writes fail with ENOSPC, as they do when the disk is full.

    Clean copies: once uploaded and closed, a copy stays as a cache of that version (by inode and ETag),
    so reading back what was just written, or editing it again, needs no request. Only clean copies are
    ever evicted (least recently used first), when room is needed or they pass ``limit`` (1 GiB without
    one); dirty data is never evicted.
    """

    def __init__(
        self,
        store: ObjectStore,
        folder: Path,
        spawn: Callable[..., object],
        layout: PartLayout | None = None,
        concurrency: int = 8,
        limit: int | None = None,
        max_clean_files: int = 256,
        memory_budget: int = MEMORY_BYTES,
    ) -> None:
        self.store = store
        self.max_clean_files = max_clean_files
        self.folder = folder
        self.layout = layout or PartLayout()
        self._spawn = spawn
        self._slots = trio.Semaphore(max(1, concurrency))
        self.limit = limit
        self.used = 0  # bytes of the cache folder's disk held by copies
        self.memory_budget = memory_budget
        self.memory = 0  # bytes held by copies in memory
        self.pending = 0  # bytes of writes acknowledged but not on the local disk yet, over all files
        self._clean: OrderedDict[int, StagedFile] = OrderedDict()  # inode -> uploaded copy, LRU first

    # -- local copies --------------------------------------------------------------------------------

    def create(self, node: Inode, base_etag: str | None, base_size: int, truncate: bool) -> StagedFile:
        """A staged copy of ``node`` starting from version ``base_etag`` (None: a new file). Nothing is
        downloaded now: parts are fetched when a read or a partial write first needs them. An empty copy
        starts in memory when there is room (see SPILL_BYTES)."""
        size = 0 if truncate or base_etag is None else base_size
        if size == 0 and self._memory_room(SPILL_BYTES):
            fd, path = os.memfd_create("s3files-staged", os.MFD_CLOEXEC), None
        else:
            fd, path = self._new_file(size)
        return StagedFile(
            path,
            fd,
            base_etag=base_etag,
            base_size=size,
            node=node,
            dirty=base_etag is None or (truncate and base_size > 0),  # even an empty new file is created
            length=size,
        )

    def _new_file(self, size: int) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self.folder, prefix="staged-")
        try:
            os.ftruncate(fd, size)  # sparse: holes until parts are fetched or written
        except OSError:
            os.close(fd)
            os.unlink(name)
            raise
        return fd, Path(name)

    def _memory_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit in memory, evicting clean copies held there if need be."""
        if self.memory + nbytes > self.memory_budget:
            for ino in [ino for ino, staged in self._clean.items() if staged.path is None]:
                self._drop(self._clean.pop(ino))
                if self.memory + nbytes <= self.memory_budget:
                    break
        return self.memory + nbytes <= self.memory_budget

    def _spill(self, staged: StagedFile) -> None:
        """Move a copy held in memory into the cache folder (it grows past SPILL_BYTES, memory is short,
        or it must outlive the process). Synchronous, so nothing sees it half moved; on a full disk the
        copy stays in memory, unchanged, and CacheFull is raised."""
        if staged.path is None:
            data = os.pread(staged.fd, staged.length, 0)  # a copy in memory never has writes queued
            if not self._disk_room(len(data)):
                raise self._full()
            try:
                fd, path = self._new_file(staged.length)
            except OSError as exc:
                raise self._unwritable(exc) from None
            try:
                self._pwrite(fd, data, 0)
            except OSError as exc:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise self._unwritable(exc) from None
            os.close(staged.fd)
            self.memory -= staged.allocated
            staged.fd, staged.path, staged.allocated = fd, path, 0
            self._account(staged)

    def _unwritable(self, exc: OSError) -> CacheFull:
        return CacheFull(f"the cache folder {self.folder} is full or unwritable ({exc.strerror})")

    def _spill_or_break(self, staged: StagedFile) -> None:
        """Spill before a write or truncate that needs it; if that fails, the change is refused, and a
        file missing a change the program made must never be uploaded (as for any refused write)."""
        try:
            self._spill(staged)
        except CacheFull:
            staged.broken = "the cache was full"
            raise

    def keep_on_disk(self, staged: StagedFile) -> str:
        """Make sure ``staged`` outlives the process (it holds changes not uploaded); where it is now."""
        try:
            self._spill(staged)
        except CacheFull as exc:
            return f"memory only, lost at exit: {exc}"
        return str(staged.path)

    # -- clean copies -----------------------------------------------------------------------------------

    def keep_clean(self, staged: StagedFile) -> None:
        """Keep an uploaded, closed copy as the cache of its version (``base_etag``)."""
        assert not staged.dirty and staged.upload is None and staged.broken is None
        old = self._clean.pop(staged.node.ino, None)
        if old is not None:
            self._drop(old)
        self._clean[staged.node.ino] = staged
        self._trim(0, self.limit if self.limit is not None else DEFAULT_CLEAN_BYTES)

    def take_clean(self, node: Inode) -> StagedFile | None:
        """The clean copy of ``node``'s current version, handed over to be written to (or None)."""
        staged = self._clean.pop(node.ino, None)
        if staged is None:
            return None
        if staged.base_etag != node.etag or staged.size() != node.size:
            self._drop(staged)  # an older version: the object changed since
            return None
        staged.node = node
        return staged

    def read_clean(self, ino: int, etag: str | None, off: int, size: int) -> bytes | None:
        """Bytes from the clean copy of version ``etag`` if it holds the whole file, else None."""
        staged = self._clean.get(ino)
        if staged is None or etag is None or staged.base_etag != etag:
            return None
        if len(staged.present) < self.layout.count(staged.base_size):
            return None  # some parts were copied inside S3 and never came here
        self._clean.move_to_end(ino)
        return os.pread(staged.fd, size, off)

    def holds_clean(self, ino: int) -> bool:
        return ino in self._clean

    def forget_clean(self, ino: int) -> None:
        staged = self._clean.pop(ino, None)
        if staged is not None:
            self._drop(staged)

    def _trim(self, nbytes: int, limit: int | None) -> None:
        """Evict clean copies, oldest first, until ``nbytes`` more fit under ``limit`` (None: all)."""
        for _ in range(len(self._clean)):
            if limit is not None and self.used + nbytes <= limit and len(self._clean) <= self.max_clean_files:
                return
            self._drop(self._clean.popitem(last=False)[1])

    def _drop(self, staged: StagedFile) -> None:
        """Close and delete a copy with no upload and no sends in flight (a clean copy, or one ``discard``
        has settled); a file marked ``keep_file`` stays on disk."""
        staged.closed = True
        with contextlib.suppress(OSError):
            os.close(staged.fd)
        if staged.path is None:
            self.memory -= staged.allocated
        else:
            self.used -= staged.allocated
        staged.allocated = 0
        if not staged.keep_file and staged.path is not None:
            staged.path.unlink(missing_ok=True)

    def aclose_clean(self) -> None:
        self._trim(0, None)

    @property
    def clean_count(self) -> int:
        return len(self._clean)

    # -- reading and writing a staged copy ---------------------------------------------------------------

    async def read(self, staged: StagedFile, key: str, off: int, size: int) -> bytes:
        end = min(off + size, staged.size())
        await self._ensure(staged, key, self.layout.overlapping(off, end))
        await self._settled(staged)
        return os.pread(staged.fd, size, off)

    async def write(self, staged: StagedFile, key: str, off: int, data: bytes) -> int:
        if staged.broken is not None:
            raise CacheFull(f"an earlier write failed ({staged.broken}); close and write the file again")
        end = off + len(data)
        parts = self.layout.overlapping(off, end)
        partial = [i for i in parts if not self._covers(staged, i, off, end)]
        await self._ensure(staged, key, partial)
        if staged.broken is not None:  # a fetch above failed to land
            raise CacheFull(f"an earlier write failed ({staged.broken}); close and write the file again")
        if staged.path is None and (end > SPILL_BYTES or not self._memory_room(len(data))):
            self._spill_or_break(staged)
        self._reserve(staged, len(data))
        if staged.path is not None and (staged.pending or len(data) > SMALL_IO):
            self._write_behind(staged, data, off)
        else:  # a small write (or one into memory) costs less than a hop to a worker thread and back
            try:
                self._pwrite(staged.fd, data, off)
            except OSError as exc:
                self._fail(staged, exc)
            self._account(staged)
        staged.length = max(staged.length, end)
        staged.present.update(i for i in parts if self.layout.span(i)[0] < staged.base_size)
        staged.touch(parts)
        self._stream(staged, key, parts, off, end)
        if staged.pending > WRITE_BEHIND_BYTES:
            await self._settled(staged)  # backpressure: the disk is the slower side
        return len(data)

    def _write_behind(self, staged: StagedFile, data: bytes, off: int) -> None:
        """Queue ``data`` for the local disk and return at once, so the next FUSE write is taken while a
        worker thread copies this one (the copy into the page cache is most of a write's cost here).
        Queued writes land in order; everything that reads the local file waits for them first."""
        previous, done = staged.last_write, trio.Event()
        staged.last_write = done
        staged.pending += len(data)
        self.pending += len(data)
        self._spawn(self._land, staged, data, off, previous, done)

    async def _land(
        self, staged: StagedFile, data: bytes, off: int, previous: trio.Event | None, done: trio.Event
    ) -> None:
        try:
            if previous is not None:
                await previous.wait()
            if staged.closed or staged.broken is not None:
                return
            for attempt in range(2):  # a second time only after clean copies made room
                try:
                    await trio.to_thread.run_sync(os.pwrite, staged.fd, data, off)
                    break
                except OSError as exc:
                    if attempt == 0 and self._made_room(exc):
                        continue
                    staged.broken = os.strerror(exc.errno or errno.EIO)
                    log.warning("op=write path=%s failed: %s; the file will not be uploaded", staged.path, exc)
                    return
            self._account(staged)
        finally:
            staged.pending -= len(data)
            self.pending -= len(data)
            done.set()

    async def _settled(self, staged: StagedFile) -> None:
        """Wait until every write queued so far is on the local disk."""
        if staged.last_write is not None:
            await staged.last_write.wait()

    def _covers(self, staged: StagedFile, index: int, off: int, end: int) -> bool:
        """Does a write of ``[off, end)`` replace every base byte of part ``index``?"""
        start, stop = self.layout.span(index)
        return off <= start and end >= min(stop, staged.base_size)

    async def truncate(self, staged: StagedFile, size: int) -> None:
        """Shrink or grow. Nothing is fetched: a part cut short still equals the base below the new
        ``base_size`` and is fetched (or copied inside S3) when needed."""
        await self._settled(staged)
        if size > SPILL_BYTES:
            self._spill_or_break(staged)
        old = staged.size()
        staged.length = size
        try:
            os.ftruncate(staged.fd, size)
        except OSError as exc:
            self._fail(staged, exc)
        self._account(staged)
        if size < staged.base_size:
            staged.base_size = size  # bytes past it are gone: growing again must show zeros, not the base
        if size > old:
            staged.touch(self.layout.overlapping(old, size))
        else:
            last = self.layout.count(size) if size else 0
            for index in [i for i in staged.changed if i >= last]:
                del staged.changed[index]
            if last - 1 in staged.changed and self.layout.span(last - 1)[1] > size:
                # The part holding the new end lost bytes: a copy of it sent earlier is stale. (A base part
                # cut short needs nothing: it still equals the base below the new base_size.)
                staged.touch(range(last - 1, last))
            staged.dirty = staged.dirty or size != old

    def _pwrite(self, fd: int, data: bytes, off: int) -> int:
        """pwrite now; on a full disk, evict every clean copy and try once more."""
        try:
            return os.pwrite(fd, data, off)
        except OSError as exc:
            if not self._made_room(exc):
                raise
        return os.pwrite(fd, data, off)

    def _made_room(self, exc: OSError) -> bool:
        """On a full disk, evict every clean copy: True if there were any, so a write may be tried again."""
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._clean:
            return False
        self._trim(0, None)
        return True

    def _reserve(self, staged: StagedFile, nbytes: int) -> None:
        """Room for a write of ``nbytes`` on the cache folder's disk, if the copy is there; a write refused
        for want of room leaves the copy unfit to upload (``broken``)."""
        if staged.path is not None and not self._disk_room(nbytes):
            staged.broken = "the cache was full"  # the file is not what the program meant: never upload it
            raise self._full()

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

    def _account(self, staged: StagedFile) -> None:
        allocated = os.fstat(staged.fd).st_blocks * 512
        if staged.path is None:
            self.memory += allocated - staged.allocated
        else:
            self.used += allocated - staged.allocated
        staged.allocated = allocated

    def _fail(self, staged: StagedFile, exc: OSError) -> None:
        """A local write failed: the copy is no longer what the program wrote, so it is never uploaded."""
        staged.broken = os.strerror(exc.errno or errno.EIO)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFull(f"the cache folder {self.folder} is full; free space there") from None
        raise exc

    async def _ensure(self, staged: StagedFile, key: str, parts: range | list[int]) -> None:
        """Fetch the base bytes of ``parts`` that are not local yet (concurrently; each part once)."""
        missing = [
            i
            for i in parts
            if i not in staged.present and self.layout.span(i)[0] < staged.base_size
        ]
        await run_all(partial(self._fetch, staged, key, index) for index in missing)

    async def _fetch(self, staged: StagedFile, key: str, index: int) -> None:
        waiting = staged.fetching.get(index)
        if waiting is not None:
            await waiting.wait()
            return
        done = staged.fetching[index] = trio.Event()
        try:
            start, stop = self.layout.span(index)
            stop = min(stop, staged.base_size)
            assert staged.base_etag is not None
            async with self._slots:
                data = await self.store.get_range(key, start, stop, if_match=staged.base_etag)
            if index in staged.present or staged.closed:
                return  # overwritten whole while we fetched: the local bytes are newer
            self._reserve(staged, len(data))
            try:
                self._pwrite(staged.fd, data, start)  # no await between the check above and this write
            except OSError as exc:
                self._fail(staged, exc)
            self._account(staged)
            staged.present.add(index)
        finally:
            del staged.fetching[index]
            done.set()

    async def discard(self, staged: StagedFile) -> None:
        """Drop the local copy (uploaded, or the file was removed) and any upload it left unfinished."""
        staged.closed = True
        await self._settled(staged)  # no queued write may touch the descriptor after it is closed
        await self._wait_for_sends(staged)
        if staged.upload is not None:
            await self._abort(staged.upload)
            staged.upload = None
        self._drop(staged)

    # -- streaming: parts finished while the program writes go out at once ------------------------------

    def _stream(self, staged: StagedFile, key: str, parts: range, off: int, end: int) -> None:
        """Send the parts this write finished (wrote up to their end) while the program goes on writing.

        Only for files past part 0 (smaller ones are one PUT at close). A part changed again later is
        sent again at commit; a random writer that never reaches a part's end sends nothing early.
        """
        size = staged.size()
        first_end = self.layout.span(0)[1]
        if size <= first_end:
            return
        if off <= first_end < end:
            parts = range(0, parts[-1] + 1)  # just grew past part 0, which was held back: it goes too
        for index in parts:
            start, stop = self.layout.span(index)
            if stop > size or stop > end:
                continue
            if start < staged.base_size and index not in staged.present:
                continue
            staged.sending += 1
            self._spawn(self._send_in_background, staged, key, index)

    async def _send_in_background(self, staged: StagedFile, key: str, index: int) -> None:
        try:
            upload = await self._upload_for(staged, key)
            await self._send(staged, upload, index)
        except S3FilesError as exc:
            log.debug("op=upload_part key=%s part=%d will be sent at close: %s", key, index + 1, exc)
        except OSError as exc:
            log.debug("op=upload_part key=%s part=%d could not be read: %s", key, index + 1, exc)
        finally:
            staged.sending -= 1
            event, staged.sent_event = staged.sent_event, trio.Event()
            event.set()

    async def _upload_for(self, staged: StagedFile, key: str) -> _Multipart:
        async with staged.upload_lock:
            if staged.closed:
                raise S3FilesError("discarded")
            upload = staged.upload
            if upload is None or upload.key != key:
                metadata = posix_metadata(staged.node, staged.mtime_set)
                upload_id = await self.store.create_multipart(key, metadata)
                upload = staged.upload = _Multipart(key, upload_id, metadata)
            return upload

    async def _send(self, staged: StagedFile, upload: _Multipart, index: int) -> None:
        generation = staged.changed.get(index, 0)
        async with self._slots:
            if staged.closed:
                return
            start, stop = self.layout.span(index)
            stop = min(stop, staged.size())
            previous = upload.sent.get(index)
            if stop <= start or (previous is not None and previous[:2] == (generation, stop - start)):
                return
            await self._settled(staged)
            part = await self.store.upload_part_from(upload.key, upload.upload_id, index + 1, staged.fd, start, stop - start)
        upload.sent[index] = (generation, stop - start, part)

    async def _wait_for_sends(self, staged: StagedFile) -> None:
        for _ in range(MAX_PARTS + 1):
            if staged.sending == 0:
                return
            await staged.sent_event.wait()

    # -- commit --------------------------------------------------------------------------------------

    async def commit(self, staged: StagedFile, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        """Write ``staged`` to ``key`` conditionally; on a conflict keep both versions and raise.

        The caller holds ``staged.lock``. On success the copy becomes the new base version.
        """
        await self._settled(staged)
        if staged.broken is not None:
            raise CacheFull(f"not uploaded: a write to this file failed earlier ({staged.broken})")
        await self._wait_for_sends(staged)
        snapshot = dict(staged.changed)
        size = staged.size()
        base_size = staged.base_size
        try:
            info = await self._write(staged, key, metadata, size, conditional=True)
        except PreconditionFailed:
            await self._keep_ours_beside(staged, key, metadata, size)
        except ObjectNotFound:
            # If-Match on a key someone deleted meanwhile. Judgement call: the writer's newer content
            # re-creates the file (what a local file system would show the writer).
            log.warning("op=upload key=%s was deleted outside this mount while open; writing it again", key)
            await self._standalone(staged, key)
            try:
                info = await self._write(staged, key, metadata, size, conditional=True)
            except PreconditionFailed:
                await self._keep_ours_beside(staged, key, metadata, size)
        # Parts now local: fetched, written, or past the old end (so written or zeros). Parts copied inside
        # S3 stay holes, fetched if ever needed.
        staged.present = {
            i
            for i in range(self.layout.count(size))
            if i in staged.present or i in snapshot or self.layout.span(i)[0] >= base_size
        }
        staged.base_etag, staged.base_size = info.etag, size
        for index, generation in snapshot.items():
            if staged.changed.get(index) == generation:
                del staged.changed[index]  # changed again meanwhile: stays changed for the next commit
        return info

    async def _keep_ours_beside(
        self, staged: StagedFile, key: str, metadata: Mapping[str, str], size: int
    ) -> NoReturn:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        beside = f"{key}.s3files-conflict-{stamp}"
        await self._standalone(staged, key)
        await self._write(staged, beside, metadata, size, conditional=False)
        log.warning("op=upload key=%s changed outside this mount; kept theirs, ours is at key=%s", key, beside)
        raise WriteConflict(f"{key} was changed by someone else; your version was saved as {beside}")

    async def _standalone(self, staged: StagedFile, key: str) -> None:
        """Make the local copy whole (every base part fetched, every part to be uploaded from it), for
        writing it somewhere the base version cannot be copied from. Raises WriteConflict, keeping the
        local file, when the base version is gone from S3."""
        if staged.upload is not None:
            await self._abort(staged.upload)
            staged.upload = None
        count = self.layout.count(staged.size())
        try:
            await self._ensure(staged, key, range(count))
        except (PreconditionFailed, ObjectNotFound):
            staged.broken = "changed outside this mount"
            staged.keep_file = True
            where = self.keep_on_disk(staged)
            log.error(
                "op=upload key=%s changed outside this mount and the parts we did not change are gone with "
                "the old version; kept theirs at the key, our changed parts stay at %s",
                key,
                where,
            )
            raise WriteConflict(
                f"{key} was changed by someone else; your changes could not be merged and stay at {where}"
            ) from None
        staged.generation += 1
        staged.changed.update(dict.fromkeys(range(count), staged.generation))
        staged.base_etag, staged.base_size = None, 0  # nothing is copied from S3 any more

    async def _write(
        self, staged: StagedFile, key: str, metadata: Mapping[str, str], size: int, conditional: bool
    ) -> ObjectInfo:
        if_match = staged.base_etag if conditional else None
        if_none_match = conditional and staged.base_etag is None
        if size <= self.layout.span(0)[1]:
            if staged.upload is not None:  # streamed, then truncated small again
                await self._abort(staged.upload)
                staged.upload = None
            await self._ensure(staged, key, range(1))
            await self._settled(staged)
            if size <= SMALL_IO or staged.path is None:  # inline in memory: a spill may swap fd meanwhile
                data = os.pread(staged.fd, size, 0)
            else:
                data = await trio.to_thread.run_sync(os.pread, staged.fd, size, 0)
            return await self.store.put(key, data, metadata, if_match=if_match, if_none_match=if_none_match)
        upload = await self._upload_for(staged, key)
        try:
            parts = await self._parts(staged, key, upload, size)
            info = await self.store.complete_multipart(
                key, upload.upload_id, parts, if_match=if_match, if_none_match=if_none_match
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._abort(upload)
            if staged.upload is upload:
                staged.upload = None
            raise
        if staged.upload is upload:
            staged.upload = None
        if dict(metadata) != upload.metadata:  # changed (chmod, utime) after the upload began
            copied = await self.store.copy(key, key, metadata=metadata)
            info = ObjectInfo(key, size, copied.etag, copied.last_modified, dict(metadata))
        return info

    async def _parts(self, staged: StagedFile, key: str, upload: _Multipart, size: int) -> list[CompletedPart]:
        """Every part of the new object: reused if sent while writing, copied inside S3 if unchanged
        from the base version, otherwise uploaded from the local copy."""
        count = self.layout.count(size)
        done: list[CompletedPart | None] = [None] * count

        async def one(index: int) -> None:
            start, stop = self.layout.span(index)
            stop = min(stop, size)
            sent = upload.sent.get(index)
            if sent is not None and sent[:2] == (staged.changed.get(index, 0), stop - start):
                done[index] = sent[2]
                return
            if index not in staged.changed and stop <= staged.base_size and staged.base_etag is not None:
                async with self._slots:
                    done[index] = await self.store.upload_part_copy(
                        key, upload.upload_id, index + 1, key, start, stop, if_match=staged.base_etag
                    )
                return
            await self._ensure(staged, key, [index])
            await self._send(staged, upload, index)
            done[index] = upload.sent[index][2]

        await run_all(partial(one, index) for index in range(count))
        return [part for part in done if part is not None]

    async def _abort(self, upload: _Multipart) -> None:
        await abort_quietly(self.store, upload.key, upload.upload_id)


def posix_metadata(node: Inode, with_mtime: bool = True) -> dict[str, str]:
    """POSIX metadata in s3fs-compatible x-amz-meta-* form (mode as decimal st_mode).

    Written data goes without ``mtime`` unless it was set explicitly after the last write (``cp -p``):
    the object's LastModified is then the file's mtime, which is right for new data, and an upload that
    began while the program was still writing need not be fixed up afterwards.
    """
    metadata = {"mode": str(node.mode), "uid": str(node.uid), "gid": str(node.gid)}
    if with_mtime:
        metadata["mtime"] = f"{node.mtime:.9f}"
    return metadata

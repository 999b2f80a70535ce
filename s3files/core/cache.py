"""The local cache: one local copy per file, in memory or in the cache folder, and its record.

Owns: every local copy of one mount (``ino -> LocalCopy``, shared by every handle that has the file open,
as in any local file system), which parts of a copy hold real bytes, fetching the parts a read or a
partial write needs (``If-Match`` the base version), the write-behind queue to the local disk, the clean
read cache (copies uploaded and closed, kept by inode and ETag), the memory and disk budgets
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
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from s3files.core.inodes import Inode
from s3files.core.parts import PartLayout
from s3files.core.records import CacheFolder, Record
from s3files.core.tasks import run_all
from s3files.core.writestate import UNSENT, WriteState, advance
from s3files.errors import S3FilesError
from s3files.store.base import CompletedPart, ObjectStore

log = logging.getLogger(__name__)

SMALL_IO = 256 * 1024  # local reads and writes up to this size are done inline, without a worker thread
WRITE_BEHIND_BYTES = 4 * 1024 * 1024  # per file: writes acknowledged before they reach the local disk
DEFAULT_CLEAN_BYTES = 1024**3  # uploaded copies kept as a read cache when no --cache-size is given
MAX_CLEAN_FILES = 16384  # each clean copy holds a file descriptor: see clean_files_for()
SPILL_BYTES = 1024 * 1024  # a new file is staged in memory until it grows past this
MEMORY_BYTES = 64 * 1024 * 1024  # bytes all copies held in memory may use together (open and clean)


def clean_files_for(descriptor_limit: int) -> int:
    """How many clean copies to keep open: a quarter of the process's descriptors (the rest stay for
    files being written, sockets and the kernel's requests), within [64, MAX_CLEAN_FILES]."""
    return max(64, min(MAX_CLEAN_FILES, descriptor_limit // 4))


class CacheFull(S3FilesError):
    """The local cache's disk (or ``--cache-size``) is full: the write is refused, nothing is uploaded."""

    errno = errno.ENOSPC


@dataclass(eq=False)
class Multipart:
    """A multipart upload in progress at ``key``; the uploader owns it. ``sent``: index -> (generation,
    length, part)."""

    key: str
    upload_id: str
    metadata: dict[str, str]
    sent: dict[int, tuple[int, int, CompletedPart]] = field(default_factory=dict)


@dataclass(eq=False)
class Sending:
    """The uploader's state of one copy (only the uploader changes it)."""

    upload: Multipart | None = None
    in_flight: int = 0  # parts being sent in the background
    event: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one CreateMultipartUpload at a time
    retry_pending: bool = False  # a background retry is scheduled


@dataclass(eq=False)
class LocalCopy:
    """The local copy of one file. ``base_etag`` None means: the key did not exist."""

    id: str
    path: os.PathLike[str] | None  # None: held in memory (an anonymous memfd), see SPILL_BYTES
    fd: int
    base_etag: str | None
    base_size: int
    node: Inode  # held: a copy must find its key even after the kernel forgot the inode
    state: WriteState = WriteState.CLEAN
    acknowledged: bool = False  # a close/fsync acknowledged the current bytes (kept in the record)
    handles: int = 0  # open handles reading or writing this copy: it lives until the last closes
    broken: str | None = None  # why a BROKEN copy is unfit (a write into it failed)
    closed: bool = False  # dropped: queued writes and background sends must not touch it
    kept: bool = False  # holds changes that could not be published anywhere: file and record stay
    recorded_ack: bool = False  # its record on disk says "acknowledged"
    mtime_set: bool = False  # mtime was set explicitly (utime) after the last write: publish it
    changed: dict[int, int] = field(default_factory=dict)  # part index -> generation of its last change
    present: set[int] = field(default_factory=set)  # parts below base_size whose bytes are local
    fetching: dict[int, trio.Event] = field(default_factory=dict)
    sending: Sending = field(default_factory=Sending)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one publish (or unlink, rename) at a time
    generation: int = 0
    allocated: int = 0  # bytes of the cache disk (or memory) this copy holds
    length: int = 0  # the file's size: the local file catches up once pending writes are done
    last_write: trio.Event | None = None  # set when every write queued so far is on the local disk
    pending: int = 0  # bytes queued for the local disk, not written yet

    def size(self) -> int:
        return self.length

    @property
    def unsent(self) -> bool:
        """The copy holds bytes S3 does not have and may still publish them."""
        return self.state in UNSENT

    def move(self, new: WriteState) -> None:
        """Change the write state (writestate.py says which moves exist)."""
        self.state = advance(self.state, new)


class LocalCache:
    """Every local copy of one mount (see the module docstring).

    ``describe`` tells a copy's key and metadata for its record. ``slots`` bounds the parts fetched at once (shared with the uploader's sends: ``slots``);
    ``limit`` bounds the bytes on disk (``--cache-size``); past it writes fail with ENOSPC. Clean copies
    are evicted least recently used first when room is needed; unsent data never is.
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
    ) -> None:
        self.store = store
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

    # -- the table of live copies -----------------------------------------------------------------------

    def get(self, ino: int) -> LocalCopy | None:
        return self._live.get(ino)

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
        if size == 0 and self._memory_room(SPILL_BYTES):
            fd, path = os.memfd_create("s3files-copy", os.MFD_CLOEXEC), None
        else:
            fd, path = self._new_file(copy_id, size)
        copy = LocalCopy(copy_id, path, fd, base_etag=base_etag, base_size=size, node=node, length=size)
        if base_etag is None or (truncate and base_size > 0):
            copy.move(WriteState.DIRTY)  # even an empty new file is created
        self.adopt(copy)
        if path is not None:
            self.save(copy)
        return copy

    def _new_file(self, copy_id: str, size: int) -> tuple[int, os.PathLike[str]]:
        path = self.folder.data_path(copy_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: holes until parts are fetched or written
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return fd, path

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
        self._account(copy)
        self.adopt(copy)
        return copy

    # -- records ------------------------------------------------------------------------------------------

    def record(self, copy: LocalCopy) -> Record:
        key, metadata = self._describe(copy)
        upload = copy.sending.upload
        sent = {}
        if upload is not None:
            sent = {
                str(i): [length, part.number, part.etag]
                for i, (gen, length, part) in upload.sent.items()
                if copy.changed.get(i, 0) == gen  # still the bytes that were sent
            }
        return Record(
            id=copy.id,
            key=key,
            base_etag=copy.base_etag,
            base_size=copy.base_size,
            size=copy.size(),
            state=copy.state.value,
            acknowledged=copy.acknowledged,
            metadata=metadata,
            changed=sorted(copy.changed),
            present=sorted(copy.present),
            upload_id=upload.upload_id if upload else None,
            upload_key=upload.key if upload else None,
            upload_metadata=upload.metadata if upload else None,
            sent=sent,
            updated=time.time(),
        )

    def save(self, copy: LocalCopy, durable: bool = False) -> None:
        """Write ``copy``'s record (only copies in the cache folder have one; see the module docstring)."""
        if copy.path is None or copy.closed:
            return
        try:
            self.folder.save(self.record(copy), durable=durable)
            copy.recorded_ack = copy.acknowledged
        except OSError as exc:
            log.error("op=record path=%s cannot be written: %s", copy.path, exc)

    # -- memory and disk ----------------------------------------------------------------------------------

    def _memory_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit in memory, evicting clean copies held there if need be."""
        if self.memory + nbytes > self.memory_budget:
            for ino in [ino for ino, copy in self._clean.items() if copy.path is None]:
                self._drop(self._clean.pop(ino))
                if self.memory + nbytes <= self.memory_budget:
                    break
        return self.memory + nbytes <= self.memory_budget

    def spill(self, copy: LocalCopy) -> None:
        """Move a copy held in memory into the cache folder (it grows past SPILL_BYTES, memory is short,
        or it must outlive the process). Synchronous, so nothing sees it half moved; on a full disk the
        copy stays in memory, unchanged, and CacheFull is raised."""
        if copy.path is not None:
            return
        data = os.pread(copy.fd, copy.length, 0)  # a copy in memory never has writes queued
        if not self._disk_room(len(data)):
            raise self._full()
        try:
            fd, path = self._new_file(copy.id, copy.length)
        except OSError as exc:
            raise self._unwritable(exc) from None
        try:
            self._pwrite(fd, data, 0)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)  # type: ignore[attr-defined]
            raise self._unwritable(exc) from None
        os.close(copy.fd)
        self.memory -= copy.allocated
        copy.fd, copy.path, copy.allocated = fd, path, 0
        self._account(copy)
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

    def _break(self, copy: LocalCopy, why: str) -> None:
        """A change the program made did not land: the copy is not what it wrote, so never publish it."""
        copy.broken = why
        if copy.state is not WriteState.ORPHANED:
            copy.move(WriteState.BROKEN)

    def _check_usable(self, copy: LocalCopy) -> None:
        if copy.broken is not None:
            raise CacheFull(f"an earlier write failed ({copy.broken}); close and write the file again")

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

    def _account(self, copy: LocalCopy) -> None:
        allocated = os.fstat(copy.fd).st_blocks * 512
        if copy.path is None:
            self.memory += allocated - copy.allocated
        else:
            self.used += allocated - copy.allocated
        copy.allocated = allocated

    def _reserve(self, copy: LocalCopy, nbytes: int) -> None:
        if copy.path is not None and not self._disk_room(nbytes):
            self._break(copy, "the cache was full")
            raise self._full()

    def _fail(self, copy: LocalCopy, exc: OSError) -> None:
        self._break(copy, os.strerror(exc.errno or errno.EIO))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFull(f"the cache folder {self.folder.root} is full; free space there") from None
        raise exc

    def _pwrite(self, fd: int, data: bytes, off: int) -> int:
        """pwrite now; on a full disk, evict every clean copy and try once more."""
        try:
            return os.pwrite(fd, data, off)
        except OSError as exc:
            if not self._made_room(exc):
                raise
        return os.pwrite(fd, data, off)

    def _made_room(self, exc: OSError) -> bool:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._clean:
            return False
        self._trim(0, None)
        return True

    # -- clean copies ---------------------------------------------------------------------------------------

    def settle(self, copy: LocalCopy) -> bool:
        """The last handle of ``copy`` closed and nothing is left to send: keep it as the clean cache of
        its version, or drop it. True if it was kept clean. (Unsent copies stay live: see fs.py.)"""
        assert not copy.unsent and copy.sending.in_flight == 0
        if self._live.get(copy.node.ino) is copy:
            del self._live[copy.node.ino]
        if copy.state is not WriteState.CLEAN or copy.sending.upload is not None or copy.base_etag is None:
            self._drop(copy)
            return False
        self.folder.remove(copy.id, keep_data=True)  # clean: nothing to recover, swept at the next mount
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

    # -- reading and writing a copy -------------------------------------------------------------------

    async def read(self, copy: LocalCopy, key: str, off: int, size: int) -> bytes:
        end = min(off + size, copy.size())
        await self.ensure(copy, key, self.layout.overlapping(off, end))
        await self.settled(copy)
        return os.pread(copy.fd, size, off)

    async def write(self, copy: LocalCopy, key: str, off: int, data: bytes) -> range:
        """Write ``data`` at ``off``; returns the parts it touched (for the uploader to stream)."""
        self._check_usable(copy)
        end = off + len(data)
        parts = self.layout.overlapping(off, end)
        partial_parts = [i for i in parts if not self._covers(copy, i, off, end)]
        await self.ensure(copy, key, partial_parts)
        self._check_usable(copy)  # a fetch above failed to land
        if copy.path is None and (end > SPILL_BYTES or not self._memory_room(len(data))):
            try:
                self.spill(copy)
            except CacheFull:
                self._break(copy, "the cache was full")
                raise
        self._reserve(copy, len(data))
        if copy.path is not None and (copy.pending or len(data) > SMALL_IO):
            self._write_behind(copy, data, off)
        else:  # a small write (or one into memory) costs less than a hop to a worker thread and back
            try:
                self._pwrite(copy.fd, data, off)
            except OSError as exc:
                self._fail(copy, exc)
            self._account(copy)
        copy.length = max(copy.length, end)
        copy.present.update(i for i in parts if self.layout.span(i)[0] < copy.base_size)
        self.touch(copy, parts)
        if copy.pending > WRITE_BEHIND_BYTES:
            await self.settled(copy)  # backpressure: the disk is the slower side
        return parts

    def touch(self, copy: LocalCopy, parts: range) -> None:
        """Mark ``parts`` changed (a new generation: a part sent before must be sent again)."""
        copy.generation += 1
        for index in parts:
            copy.changed[index] = copy.generation
        self.changed(copy)
        copy.mtime_set = False

    def changed(self, copy: LocalCopy) -> None:
        """Data, size or metadata of ``copy`` differ from S3 now; an acknowledgement no longer covers it."""
        copy.acknowledged = False
        copy.generation += 1  # an upload in flight sees it and leaves the copy DIRTY when it is done
        if copy.state in (WriteState.CLEAN, WriteState.ACKED, WriteState.CONFLICTED):
            copy.move(WriteState.DIRTY)
        if copy.recorded_ack:
            self.save(copy)  # the record must stop saying "acknowledged": recovery would publish this

    def _write_behind(self, copy: LocalCopy, data: bytes, off: int) -> None:
        """Queue ``data`` for the local disk and return at once, so the next FUSE write is taken while a
        worker thread copies this one. Queued writes land in order; readers of the file wait for them."""
        previous, done = copy.last_write, trio.Event()
        copy.last_write = done
        copy.pending += len(data)
        self.pending += len(data)
        self._spawn(self._land, copy, data, off, previous, done)

    async def _land(self, copy: LocalCopy, data: bytes, off: int, previous: trio.Event | None, done: trio.Event) -> None:
        try:
            if previous is not None:
                await previous.wait()
            if copy.closed or copy.broken is not None:
                return
            for attempt in range(2):  # a second time only after clean copies made room
                try:
                    await trio.to_thread.run_sync(os.pwrite, copy.fd, data, off)
                    break
                except OSError as exc:
                    if attempt == 0 and self._made_room(exc):
                        continue
                    self._break(copy, os.strerror(exc.errno or errno.EIO))
                    log.warning("op=write path=%s failed: %s; the file will not be uploaded", copy.path, exc)
                    return
            self._account(copy)
        finally:
            copy.pending -= len(data)
            self.pending -= len(data)
            done.set()

    async def settled(self, copy: LocalCopy) -> None:
        """Wait until every write queued so far is on the local disk."""
        if copy.last_write is not None:
            await copy.last_write.wait()

    def _covers(self, copy: LocalCopy, index: int, off: int, end: int) -> bool:
        """Does a write of ``[off, end)`` replace every base byte of part ``index``?"""
        start, stop = self.layout.span(index)
        return off <= start and end >= min(stop, copy.base_size)

    async def truncate(self, copy: LocalCopy, size: int) -> None:
        """Shrink or grow. Nothing is fetched: a part cut short still equals the base below the new
        ``base_size`` and is fetched (or copied inside S3) when needed."""
        await self.settled(copy)
        if size > SPILL_BYTES:
            try:
                self.spill(copy)
            except CacheFull:
                self._break(copy, "the cache was full")
                raise
        old = copy.size()
        copy.length = size
        try:
            os.ftruncate(copy.fd, size)
        except OSError as exc:
            self._fail(copy, exc)
        self._account(copy)
        if size < copy.base_size:
            copy.base_size = size  # bytes past it are gone: growing again must show zeros, not the base
        if size > old:
            self.touch(copy, self.layout.overlapping(old, size))
        else:
            last = self.layout.count(size) if size else 0
            for index in [i for i in copy.changed if i >= last]:
                del copy.changed[index]
            if last - 1 in copy.changed and self.layout.span(last - 1)[1] > size:
                # The part holding the new end lost bytes: a copy of it sent earlier is stale.
                self.touch(copy, range(last - 1, last))
            if size != old:
                self.changed(copy)

    # -- fetching base parts ------------------------------------------------------------------------------

    async def ensure(self, copy: LocalCopy, key: str, parts: range | list[int]) -> None:
        """Fetch the base bytes of ``parts`` that are not local yet (concurrently; each part once)."""
        missing = [i for i in parts if i not in copy.present and self.layout.span(i)[0] < copy.base_size]
        await run_all(partial(self._fetch, copy, key, index) for index in missing)

    async def _fetch(self, copy: LocalCopy, key: str, index: int) -> None:
        waiting = copy.fetching.get(index)
        if waiting is not None:
            await waiting.wait()
            return
        done = copy.fetching[index] = trio.Event()
        try:
            start, stop = self.layout.span(index)
            stop = min(stop, copy.base_size)
            assert copy.base_etag is not None
            async with self.slots:
                data = await self.store.get_range(key, start, stop, if_match=copy.base_etag)
            if index in copy.present or copy.closed:
                return  # overwritten whole while we fetched: the local bytes are newer
            self._reserve(copy, len(data))
            try:
                self._pwrite(copy.fd, data, start)  # no await between the check above and this write
            except OSError as exc:
                self._fail(copy, exc)
            self._account(copy)
            copy.present.add(index)
        finally:
            del copy.fetching[index]
            done.set()

    def statistics(self) -> dict[str, int]:
        return {
            "local_copies": len(self._live),
            "unsent_files": sum(1 for c in self._live.values() if c.unsent),
            "cache_bytes": self.used,
            "memory_bytes": self.memory,
            "clean_files": len(self._clean),
        }

"""Reading and writing a local copy: fetching base parts, the write-behind queue, truncation.

Owns: how bytes get into and out of a copy's file: a read or a partial write fetches the base parts it
needs (ranged GETs ``If-Match`` the base version, each part once, ``slots`` at a time), writes of more
than ``SMALL_IO`` are queued for a worker thread (write-behind, at most ``WRITE_BEHIND_BYTES`` per file)
and land in order, and every change marks its parts with a new generation; and the acknowledged version
of a copy written again before its upload (copies.py ``AckedView``): saving what a change would destroy
of it, reading it back for the uploader, and making the copy's base that version once it is published.
Must not decide budgets or which copies exist (it asks the cache: cache.py) nor publish (uploader.py).

Why saving aside is crash-safe: the bytes a write overwrites (or a truncate cuts) below the acknowledged
length are written to the side file and fsynced, then the record naming them as an extent is replaced
(fsynced, atomically), and only then does the write reach the data file. A daemon (or machine) that dies
at any point leaves either the old record, which does not name the extent and whose data file still holds
those bytes, or the new record, whose side file holds them: either way the acknowledged version can be
rebuilt. The newer write itself is not acknowledged (no close or fsync yet), so it needs no fsync; a write
at or past the acknowledged length destroys nothing and costs nothing more.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from s3files.core.copies import SMALL_IO, SPILL_BYTES, WRITE_BEHIND_BYTES, AckedView, CacheFull, LocalCopy
from s3files.core.parts import PartLayout
from s3files.core.tasks import run_all
from s3files.core.writestate import WAITING, WriteState
from s3files.errors import TooLarge
from s3files.store.base import ObjectStore

if TYPE_CHECKING:
    from s3files.core.cache import LocalCache

log = logging.getLogger(__name__)


class CopyIO:
    """Reads and writes of the copies of one ``cache``."""

    def __init__(
        self, cache: LocalCache, store: ObjectStore, layout: PartLayout, slots: trio.Semaphore, spawn: Callable[..., object]
    ) -> None:
        self.cache = cache
        self.store = store
        self.layout = layout
        self.slots = slots
        self._spawn = spawn

    async def read(self, copy: LocalCopy, key: str, off: int, size: int) -> bytes:
        end = min(off + size, copy.size())
        await self.ensure(copy, key, self.layout.overlapping(off, end))
        await self.settled(copy)
        return os.pread(copy.fd, size, off)

    async def write(self, copy: LocalCopy, key: str, off: int, data: bytes) -> range:
        """Write ``data`` at ``off``; returns the parts it touched (for the uploader to stream)."""
        self.cache.check_usable(copy)
        end = off + len(data)
        append = self.appends_only(copy, off)
        if self.keeps_acked(copy):
            await self.keep_acked(copy, key, off, end, record=not append)
        parts = self.layout.overlapping(off, end)
        partial_parts = [i for i in parts if not self._covers(copy, i, off, end)]
        await self.ensure(copy, key, partial_parts)
        self.cache.check_usable(copy)  # a fetch above failed to land
        if copy.path is None and (end > SPILL_BYTES or not self.cache.memory_room(len(data))):
            try:
                self.cache.spill(copy)
            except CacheFull:
                self.cache.break_copy(copy, "the cache was full")
                raise
        self.cache.reserve(copy, len(data))
        if copy.path is not None and (copy.pending or len(data) > SMALL_IO):
            self._write_behind(copy, data, off)
        else:  # a small write (or one into memory) costs less than a hop to a worker thread and back
            try:
                self.cache.pwrite(copy.fd, data, off)
            except OSError as exc:
                self.cache.fail(copy, exc)
            self.cache.account(copy)
        copy.length = max(copy.length, end)
        copy.present.update(i for i in parts if self.layout.span(i)[0] < copy.base_size)
        self.touch(copy, parts, record=not append)
        if copy.pending > WRITE_BEHIND_BYTES:
            await self.settled(copy)  # backpressure: the disk is the slower side
        return parts

    def appends_only(self, copy: LocalCopy, off: int) -> bool:
        """A write at ``off`` leaves the record on disk true as it is: the record is that of the last
        acknowledgement (ACKED, or REWRITTEN by appends only since) and the write starts at or past the
        acknowledged length. Every byte of the acknowledged version stays where the record says, and
        recovery reads an acknowledged record whose data file is longer as that version followed by
        bytes never closed (recovery.py), exactly what a rewritten record would have said. So
        ``exec 3>>log; echo $i >&3`` costs no record between its flushes."""
        if not copy.recorded_ack or copy.state not in WAITING or copy.path is None:
            return False
        acked = copy.acked
        if acked is None:
            return copy.state is WriteState.ACKED and off >= copy.length
        return not acked.extents and acked.low >= acked.size and off >= acked.size

    def touch(self, copy: LocalCopy, parts: range, record: bool = True) -> None:
        """Mark ``parts`` changed (a new generation: a part sent before must be sent again). ``record``
        False: an append the record on disk already tells apart (``appends_only``)."""
        copy.generation += 1
        for index in parts:
            copy.changed[index] = copy.generation
        self.changed(copy, record)

    def changed(self, copy: LocalCopy, record: bool = True) -> None:
        """Data, size or metadata of ``copy`` differ from S3 now; an acknowledgement no longer covers it
        (an unpublished acknowledged version is kept aside: ``keep_acked``). ``record`` False: the
        record on disk stays (``appends_only``)."""
        self._begin_acked(copy, record)  # (if it holds an acknowledged version not published yet)
        copy.acknowledged = False
        copy.generation += 1  # an upload in flight sees it and leaves the copy DIRTY when it is done
        if copy.state in (WriteState.CLEAN, WriteState.ACKED, WriteState.CONFLICTED):
            copy.move(WriteState.DIRTY)
        if copy.recorded_ack and record:
            self.cache.save(copy)  # the record must stop saying "acknowledged": recovery would publish this

    def _write_behind(self, copy: LocalCopy, data: bytes, off: int) -> None:
        """Queue ``data`` for the local disk and return at once, so the next FUSE write is taken while a
        worker thread copies this one. Queued writes land in order; readers of the file wait for them."""
        previous, done = copy.last_write, trio.Event()
        copy.last_write = done
        copy.pending += len(data)
        self.cache.pending += len(data)
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
                    if attempt == 0 and self.cache.made_room(exc):
                        continue
                    self.cache.break_copy(copy, os.strerror(exc.errno or errno.EIO))
                    log.warning("op=write path=%s failed: %s; the file will not be uploaded", copy.path, exc)
                    return
            self.cache.account(copy)
        finally:
            copy.pending -= len(data)
            self.cache.pending -= len(data)
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
                self.cache.spill(copy)
            except CacheFull:
                self.cache.break_copy(copy, "the cache was full")
                raise
        old = copy.size()
        if self.keeps_acked(copy):
            await self.keep_acked(copy, self.cache.key_of(copy), size, old)
        try:
            os.ftruncate(copy.fd, size)
        except OSError as exc:
            if exc.errno in (errno.EFBIG, errno.EINVAL):
                # past what the cache folder's file system holds: refused, and nothing changed
                raise TooLarge(f"{copy.node.path}: the cache folder cannot hold {size} bytes") from None
            self.cache.fail(copy, exc)
        copy.length = size
        if copy.acked is not None:
            copy.acked.low = min(copy.acked.low, size)
        self.cache.account(copy)
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
            self.cache.reserve(copy, len(data))
            try:
                self.cache.pwrite(copy.fd, data, start)  # no await between the check above and this write
            except OSError as exc:
                self.cache.fail(copy, exc)
            self.cache.account(copy)
            copy.present.add(index)
        finally:
            del copy.fetching[index]
            done.set()

    # -- the acknowledged version kept aside (copies.py AckedView) -------------------------------------

    def keeps_acked(self, copy: LocalCopy) -> bool:
        """Whether a change to ``copy`` now must first keep an acknowledged version aside: it waits for
        its upload (ACKED, REWRITTEN), or its close's upload is under way and may yet fail (UPLOADING)."""
        if copy.state in WAITING:
            return True
        return copy.state is WriteState.UPLOADING and (copy.acknowledged or copy.acked is not None)

    def _begin_acked(self, copy: LocalCopy, record: bool = True) -> None:
        """``copy``'s acknowledged state is about to change: keep it (ACKED becomes REWRITTEN; an UPLOADING
        copy keeps its state, and becomes REWRITTEN if the upload fails). Nothing is copied now;
        ``keep_acked`` saves bytes as changes reach them. A copy held in memory moves to the cache
        folder first (CacheFull: the change is refused, the copy stays as it was)."""
        if copy.acked is not None or not self.keeps_acked(copy):
            return
        self.cache.spill(copy)
        copy.acked = AckedView(
            size=copy.length,
            side=self.cache.folder.side_name(copy.id),
            metadata=dict(copy.ack_metadata if copy.ack_metadata is not None else self.cache.metadata_of(copy)),
            base_size=copy.base_size,
            changed=dict(copy.changed),
            low=copy.length,
        )
        copy.acknowledged = False
        if copy.state is WriteState.ACKED:
            copy.move(WriteState.REWRITTEN)
        if record:  # (an append leaves the record as it is: appends_only)
            self.cache.save(copy)  # recovery must see two versions now; no fsync: see _save_acked

    async def keep_acked(self, copy: LocalCopy, key: str, off: int, end: int, record: bool = True) -> None:
        """Bytes ``[off, end)`` of ``copy`` are about to be overwritten or cut: the part of them that
        belongs to its acknowledged, unpublished version and is not saved yet goes to the side file
        first (see the module docstring for the order). Writes queued before land first, and base bytes
        not fetched yet are fetched: the side file must hold the version's bytes, not older ones or
        holes."""
        if not self.keeps_acked(copy):
            return
        self._begin_acked(copy, record)
        view = copy.acked
        if view is None or not view.saved(off, end):
            return  # at or past its end (an append): nothing to keep, no lock taken
        async with copy.ack_lock:
            await self.settled(copy)
            await self.ensure(copy, key, sorted({i for a, b in view.saved(off, end) for i in self.layout.overlapping(a, b)}))
            self.cache.check_usable(copy)
            if copy.acked is view:  # (not published meanwhile)
                self._save_acked(copy, view, view.saved(off, end))

    def _save_acked(self, copy: LocalCopy, view: AckedView, todo: list[tuple[int, int]]) -> None:
        if not todo:
            return
        if not self.cache.disk_room(sum(b - a for a, b in todo)):
            raise CacheFull("the cache is full: the closed version of this file cannot be kept aside")
        extents = list(view.extents)
        size = view.side_size
        try:
            if view.side_fd is None:
                view.side_fd = self.cache.folder.open_side(view.side)
            for a, b in todo:
                data = os.pread(copy.fd, b - a, a).ljust(b - a, b"\0")
                os.pwrite(view.side_fd, data, size)
                extents.append((a, b - a, size))
                size += b - a
            self.cache.folder.sync_file(view.side_fd)
        except OSError as exc:
            raise CacheFull(f"the closed version of this file cannot be kept aside ({exc.strerror})") from None
        self.cache.used += size - view.side_size  # the side file counts against --cache-size too
        view.extents, view.side_size = sorted(extents), size
        self.cache.save_strictly(copy)  # the record names the extents before the data file changes

    async def read_acked(self, copy: LocalCopy, view: AckedView | None, key: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the acknowledged version: the data file overlaid with the saved
        extents of ``view`` (None: none kept yet, the data file as it is), cut at its length."""
        if view is not None:
            stop = min(stop, view.size)
        await self.ensure(copy, key, self.layout.overlapping(start, stop))
        await self.settled(copy)
        if view is None:
            self.cache.check_usable(copy)  # (a failed write after the version kept aside leaves it whole)

        def read() -> bytes:
            data = bytearray(os.pread(copy.fd, stop - start, start).ljust(stop - start, b"\0"))
            for off, length, side in view.extents if view is not None else ():
                a, b = max(off, start), min(off + length, stop)
                if a < b:
                    assert view is not None and view.side_fd is not None
                    data[a - start : b - start] = os.pread(view.side_fd, b - a, side + a - off)
            return bytes(data)

        async with copy.ack_lock:  # no save (and so no overwrite of an unsaved byte) while we read
            if view is None and copy.acked is not None:
                view = copy.acked  # kept aside while we waited: read through it
                stop = min(stop, view.size)
            if stop - start <= SMALL_IO or copy.path is None:  # inline in memory: a spill may swap fd
                return read()
            return await trio.to_thread.run_sync(read)

    def changed_since(self, copy: LocalCopy, view: AckedView) -> set[int]:
        """The parts of ``copy`` that differ from its acknowledged version ``view``: those with saved
        extents, those written since, and those holding bytes past the version's end."""
        parts: set[int] = set()
        for off, length, _ in view.extents:
            parts.update(self.layout.overlapping(off, off + length))
        parts.update(i for i, gen in copy.changed.items() if view.changed.get(i) != gen)
        if copy.length > view.size:
            parts.update(self.layout.overlapping(view.size, copy.length))
        return {i for i in parts if i < self.layout.count(copy.length)}

    def rebase(self, copy: LocalCopy, view: AckedView, etag: str) -> None:
        """The acknowledged version ``view`` is in S3 as ``etag``: it becomes the copy's base (the
        parts that differ from it are ``changed_since``; the rest may be copied inside S3 from it),
        what was kept aside goes, and the copy is DIRTY (its newer bytes are not acknowledged)."""
        parts = self.changed_since(copy, view)
        copy.generation += 1
        copy.present = {
            i for i in range(self.layout.count(copy.length)) if i in copy.present or self.layout.span(i)[0] >= copy.base_size
        }
        copy.changed = dict.fromkeys(parts, copy.generation)
        copy.base_etag, copy.base_size = etag, min(view.size, view.low, copy.length)
        self.drop_acked(copy)
        copy.move(WriteState.DIRTY if copy.broken is None else WriteState.BROKEN)
        self.cache.save(copy, durable=True)  # the record stops naming the version before its side file goes
        self.cache.folder.side_path(view.side).unlink(missing_ok=True)

    def drop_acked(self, copy: LocalCopy) -> AckedView | None:
        """Forget the kept version (published, or superseded by a newer acknowledgement); returns it.
        Its side file is deleted by the caller once the record no longer names it (or by ``remove``)."""
        view, copy.acked = copy.acked, None
        if view is not None:
            self.cache.used -= view.side_size
            view.side_size = 0
            if view.side_fd is not None:
                os.close(view.side_fd)
                view.side_fd = None
        return view

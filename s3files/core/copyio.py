"""Reading and writing a local copy: fetching base parts, the write-behind queue, truncation.

Owns: how bytes get into and out of a copy's file: a read or a partial write fetches the base parts it
needs (ranged GETs ``If-Match`` the base version, each part once, ``slots`` at a time), writes of more
than ``SMALL_IO`` are queued for a worker thread (write-behind, at most ``WRITE_BEHIND_BYTES`` per file)
and land in order, and every change marks its parts with a new generation. Must not decide budgets or
which copies exist (it asks the cache: cache.py) nor publish (uploader.py).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from s3files.core.copies import SMALL_IO, SPILL_BYTES, WRITE_BEHIND_BYTES, CacheFull, LocalCopy
from s3files.core.parts import PartLayout
from s3files.core.tasks import run_all
from s3files.core.writestate import WriteState
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

    def changed(self, copy: LocalCopy) -> None:
        """Data, size or metadata of ``copy`` differ from S3 now; an acknowledgement no longer covers it."""
        copy.acknowledged = False
        copy.generation += 1  # an upload in flight sees it and leaves the copy DIRTY when it is done
        if copy.state in (WriteState.CLEAN, WriteState.ACKED, WriteState.CONFLICTED):
            copy.move(WriteState.DIRTY)
        if copy.recorded_ack:
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
        try:
            os.ftruncate(copy.fd, size)
        except OSError as exc:
            if exc.errno in (errno.EFBIG, errno.EINVAL):
                # past what the cache folder's file system holds: refused, and nothing changed
                raise TooLarge(f"{copy.node.path}: the cache folder cannot hold {size} bytes") from None
            self.cache.fail(copy, exc)
        copy.length = size
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

"""Reading one open object: ranged GETs, with a growing read-ahead window for sequential readers.

Owns: which byte ranges are fetched when, the parts in flight and in memory for one open file, and
cancelling them when the file is closed. Must not decide consistency (the caller pins the ETag).

How it works. The object is split into *parts* fetched by concurrent ranged GETs (``If-Match`` the ETag
the file was opened at, so a reader never mixes two versions). A reader that keeps reading where it
stopped is sequential: the window ahead of it grows first_part -> x8 -> ... -> max_window (1 -> 8 ->
64 MiB by default) and is kept full with parts of up to part_size. The first part is small because time to
first byte is set by it. A reader that jumps is random: it fetches exactly the bytes asked for and the
window starts again small. Parts never overlap, so no byte is fetched twice while it is held.

Memory: at most ``max_window`` ahead plus ``part_size`` behind the reader (the kernel may deliver
concurrent reads slightly out of order, so a part is dropped only once the reader is a part beyond it).
A consumed part's buffer receives a later part (``into``) when nothing references it any more, because a
fresh one costs zeroing and page faults, about a fifth of the daemon's CPU per byte read. Spare buffers
live in the mount's ``PartBuffers``, shared by every reader, so the next file reuses them too (at most
``max_window + part_size`` of them, dropped after ``IDLE_SECONDS`` unused).

Invariant: ``_parts`` is sorted, contiguous and non-overlapping; between awaits only this object mutates
it (trio is single-threaded), so scheduling is done without awaiting.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from s3files.errors import S3FilesError, StoreError
from s3files.options import ReadOptions
from s3files.store.base import ObjectStore

log = logging.getLogger(__name__)

Spawn = Callable[[Callable[[], Awaitable[None]]], None]

IDLE_SECONDS = 30.0  # spare part buffers unused this long are given back to the system


class PartBuffers:
    """Spare buffers of one part size, shared by a mount's readers.

    Why: a new 8 MiB buffer is zeroed and faults in 2,048 pages (in a VM, often the host's pages too);
    reused, it costs nothing. Readers of one file at a time (a data loader, a copy loop) would otherwise
    pay that for the first ``max_window`` of every file. Bounded by ``limit`` bytes, and emptied once
    nobody has taken or given a buffer for ``IDLE_SECONDS``, so an idle mount holds none.
    """

    def __init__(self, size: int, limit: int, spawn: Spawn) -> None:
        self.size = size
        self._most = max(limit // size, 1)
        self._free: list[bytearray] = []
        self._spawn = spawn
        self._last_use = 0.0
        self._trim_pending = False

    @property
    def held_bytes(self) -> int:
        return len(self._free) * self.size

    def take(self) -> bytearray | None:
        self._last_use = trio.current_time()
        return self._free.pop() if self._free else None

    def give(self, buffer: bytearray) -> None:
        self._last_use = trio.current_time()
        if len(buffer) != self.size or len(self._free) >= self._most:
            return
        self._free.append(buffer)
        if not self._trim_pending:
            self._trim_pending = True
            self._spawn(self._trim_when_idle)

    async def _trim_when_idle(self) -> None:
        """One check per call (a busy pool schedules the next one): no loop outlives its purpose."""
        await trio.sleep(IDLE_SECONDS)
        self._trim_pending = False
        if trio.current_time() - self._last_use >= IDLE_SECONDS:
            self._free.clear()
        elif self._free:
            self._trim_pending = True
            self._spawn(self._trim_when_idle)


@dataclass(eq=False)
class _Part:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    data: bytes | bytearray | None = None
    error: BaseException | None = None
    readers: int = 0  # reads waiting for or using this part: its buffer must not be recycled meanwhile

    async def wait(self) -> bytes | bytearray:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


class Reader:
    """Reads of one open object version. ``spawn`` runs background fetches on the mount's nursery."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        size: int,
        etag: str | None,
        opts: ReadOptions,
        spawn: Spawn,
        first: bytes | bytearray | None = None,
        buffers: PartBuffers | None = None,
    ) -> None:
        """``first``: the object's first bytes of version ``etag``, fetched already (at open);
        ``buffers``: the mount's spare part buffers (a reader of its own when None)."""
        self._store = store
        self._key = key
        self._size = size
        self._etag = etag
        self._opts = opts
        self._spawn = spawn
        self._parts: list[_Part] = []
        self._next = 0  # where a sequential reader reads next
        self._window = opts.first_part
        self._streak = 0  # bytes read sequentially since the window last grew
        self._closed = False
        self._buffers = buffers or PartBuffers(opts.part_size, 2 * opts.part_size, spawn)
        if first:
            part = _Part(0, min(len(first), size), data=first)
            part.done.set()
            self._parts.append(part)

    # -- public ------------------------------------------------------------------------------------

    async def read(self, off: int, size: int) -> bytes | memoryview:
        if self._closed:
            raise StoreError("read on a closed file")
        end = min(off + size, self._size)
        if off >= end:
            return b""
        if self._covered(off) or off == self._next:
            self._advance(off, end)
            self._next = max(self._next, end)
            wanted = [p for p in self._parts if p.start < end and p.end > off]
        else:
            self._drop_all()
            self._window = self._opts.first_part
            self._streak = 0
            wanted = [self._start_part(off, end)]  # not kept: a random read holds only its own bytes
            self._next = end
        for p in wanted:
            p.readers += 1
        try:
            chunks = [await p.wait() for p in wanted]
        except S3FilesError:
            # Forget failed parts so the next read asks S3 again instead of repeating the error.
            self._parts = [p for p in self._parts if p.error is None]
            if self._parts and not all(a.end == b.start for a, b in itertools.pairwise(self._parts)):
                self._drop_all()
            raise
        finally:
            for p in wanted:
                p.readers -= 1
        if len(chunks) == 1:
            # The common case (a read inside one part): a view, not a copy. pyfuse3 replies from any
            # buffer, and the part stays alive as long as the view does.
            base = wanted[0].start
            return memoryview(chunks[0])[off - base : end - base]
        # A read across parts (an unaligned reader): join only the bytes asked for. Joining whole parts
        # first would copy up to two parts (16 MiB) for a 1 MiB read.
        return b"".join(
            memoryview(data)[max(off, p.start) - p.start : min(end, p.end) - p.start]
            for p, data in zip(wanted, chunks, strict=True)
        )

    def moved(self, key: str) -> None:
        """The object was renamed (server-side copied to ``key``): fetch from there from now on. The
        pinned ETag stays: if the copy has another ETag, reads of new bytes fail with ESTALE rather than
        trust that the copy holds the version this file was opened at."""
        self._key = key

    def close(self) -> None:
        """Cancel every fetch in flight and drop what is held."""
        self._closed = True
        self._drop_all()

    @property
    def held_bytes(self) -> int:
        return sum(p.end - p.start for p in self._parts)

    # -- internals ---------------------------------------------------------------------------------

    def _covered(self, off: int) -> bool:
        return bool(self._parts) and self._parts[0].start <= off < self._parts[-1].end

    def _advance(self, off: int, end: int) -> None:
        """Drop parts well behind ``off``, grow the window, and schedule parts to fill it."""
        if not self._covered(off):
            self._drop_all()
        keep_from = off - self._opts.part_size
        while self._parts and self._parts[0].end <= keep_from:
            self._recycle(self._parts.pop(0))  # consumed; its bytes are in the kernel's page cache now
        target = min(max(end, off + self._window), self._size)
        cursor = self._parts[-1].end if self._parts else off
        while cursor < target:
            step = min(self._opts.part_size, self._window)
            part = self._start_part(cursor, min(cursor + step, self._size))
            self._parts.append(part)
            cursor = part.end
        # Grow only after scheduling, so a new streak starts with one small part (time to first byte).
        self._streak += end - off
        if self._streak >= self._window and self._window < self._opts.max_window:
            self._window = min(self._window * 8, self._opts.max_window)
            self._streak = 0

    def _recycle(self, part: _Part) -> None:
        """Give a dropped part's buffer to the spares if nothing else can still see it: no read is
        waiting for or using the part, and no reference (a memoryview given to the kernel, a list) remains."""
        data, part.data = part.data, None
        if (
            isinstance(data, bytearray)
            and part.readers == 0
            and sys.getrefcount(data) == 2  # ``data`` and getrefcount's argument: nobody else
        ):
            self._buffers.give(data)

    def _start_part(self, start: int, end: int) -> _Part:
        part = _Part(start, end)
        into = self._buffers.take() if end - start == self._buffers.size else None

        async def fetch() -> None:
            with part.scope:
                try:
                    part.data = await self._store.get_range(
                        self._key, start, end, if_match=self._etag, into=into
                    )
                    if len(part.data) != end - start:
                        raise StoreError(
                            f"short read of {self._key}: {len(part.data)} bytes for range {start}-{end}"
                        )
                except S3FilesError as exc:
                    part.error = exc
                except Exception as exc:
                    log.warning("op=get key=%s range=%d-%d failed: %r", self._key, start, end, exc)
                    part.error = StoreError(f"reading {self._key} failed: {exc!r}")
            if part.data is None and part.error is None:
                part.error = StoreError(f"read of {self._key} was cancelled")
            part.done.set()

        self._spawn(fetch)
        return part

    def _drop_all(self) -> None:
        for part in self._parts:
            part.scope.cancel()
            self._recycle(part)
        self._parts.clear()
